/* store_redis_lua.h -- the Lua scripts of the Redis store, version 1.
 *
 * Owns: what runs inside Redis. Each admission and each settlement is ONE
 * script, so it is atomic; the ones an iteration of the agent's loop makes
 * go together in one call of the batch script (at the end), which runs
 * them one after the other, each as it would run alone. The key
 * layout is described in store_redis.h; the "tollgate:vN:" prefix of a key
 * is the version of its layout: change a key's layout and its prefix (and
 * these names) change with it (the rate window is at v2, the rest at v1).
 *
 * `now` is Redis TIME in ms unless the caller passes now_ms >= 0 (tests,
 * store_redis_set_test_clock). redis.replicate_commands() keeps TIME
 * followed by writes legal on Redis < 5 (a no-op from 5 on).
 *
 * Kept as C string literals (no build step); every line ends in "\n" so
 * Redis's error messages give useful line numbers.
 */
#ifndef TOLLGATE_STORE_REDIS_LUA_H
#define TOLLGATE_STORE_REDIS_LUA_H

/* admit: reserve the estimate in every bucket of one request, or in none.
 *   KEYS[1]        tollgate:v1:res:<rid>
 *   KEYS[2]        tollgate:v1:done:<rid>
 *   KEYS[2i+1]     bucket i's data: tollgate:v2:win:K (rate) or K (quota)
 *   KEYS[2i+2]     tollgate:v1:inf:K
 *   ARGV           rid, lease_ms (> 0), strict (0|1), n, now_ms (-1: TIME),
 *                  record_grace_ms, then per bucket:
 *                  K, window_ms, limit, estimate (>= 0), w_in, w_out
 * Returns {admitted, refused (0-based, -1), then per bucket used, reserved,
 * remaining, reset_ms}, or {-1} when the rid is already reserved or settled
 * (rids are unique per transaction: a reuse is a caller bug). Windows and
 * reset_ms follow store_mem.c exactly: sub-windows of g = ceil(window/60)
 * ms (1 ms up to 60 ms), one counts while it overlaps (now - window, now];
 * reset_ms is 0 when one more request (of this estimate when strict) would
 * pass, else the time until enough settled usage slides out, in-flight
 * reservations counted as if settled now (one window + the current
 * sub-window when they alone are too much). A key listed twice in one
 * request sees the request's own earlier estimate. */
static const char STORE_REDIS_LUA_ADMIT[] =
"-- tollgate admit v1\n"
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local rid, lease, strict = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'\n"
"local n, now, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
"if now < 0 then\n"
"  local t = redis.call('TIME')\n"
"  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"end\n"
"if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then\n"
"  return { -1 }\n"
"end\n"
"\n"
"local function hdel_all(key, fields)\n"
"  for i = 1, #fields, 512 do\n"
"    redis.call('HDEL', key, unpack(fields, i, math.min(i + 511, #fields)))\n"
"  end\n"
"end\n"
"\n"
"local function pair(v)\n"
"  local p = string.find(v, ':', 1, true)\n"
"  return tonumber(string.sub(v, 1, p - 1)), tonumber(string.sub(v, p + 1))\n"
"end\n"
"\n"
"-- in-flight hash: rid -> 'estimate:expiry', and '' -> 'sum:next' (the sum of\n"
"-- the estimates, a lower bound of the expiries): while nothing can have\n"
"-- lapsed the sum is read in O(1); else the hash is scanned and lapsed\n"
"-- leases are removed\n"
"local function inflight(key)\n"
"  local agg = redis.call('HGET', key, '')\n"
"  if agg then\n"
"    local sum, nxt = pair(agg)\n"
"    if nxt > now then return sum, nxt end\n"
"  end\n"
"  local all, sum, nxt, dead = redis.call('HGETALL', key), 0, nil, {}\n"
"  for j = 1, #all, 2 do\n"
"    if all[j] ~= '' then\n"
"      local est, exp = pair(all[j + 1])\n"
"      if exp <= now then dead[#dead + 1] = all[j]\n"
"      else\n"
"        sum = sum + est\n"
"        if not nxt or exp < nxt then nxt = exp end\n"
"      end\n"
"    end\n"
"  end\n"
"  hdel_all(key, dead)\n"
"  if nxt then redis.call('HSET', key, '', string.format('%d:%d', sum, nxt))\n"
"  else redis.call('HDEL', key, '') end\n"
"  return sum, nxt\n"
"end\n"
"\n"
"local function gran_of(win)\n"
"  if win <= 60 then return 1 end\n"
"  return math.ceil(win / 60)\n"
"end\n"
"\n"
"-- settled usage of the sub-windows overlapping (now - win, now]. The\n"
"-- window hash's field '' holds 'sum:low', the sum of its sub-windows and\n"
"-- the lowest index among them: while none has slid out (low >= oldest) the\n"
"-- usage is read in O(1); else the hash is read whole, what slid out is\n"
"-- removed and '' rebuilt (about once a sub-window: 1 s for a minute). A\n"
"-- version 1 window of the same bucket (v1 agents settle there during a\n"
"-- rolling upgrade) counts too while it exists.\n"
"local function window(x)\n"
"  local oldest = math.floor((now - x.win) / gran_of(x.win))\n"
"  x.oldest = oldest\n"
"  local used, agg = nil, redis.call('HGET', x.data, '')\n"
"  if agg then\n"
"    local sum, low = pair(agg)\n"
"    if low >= oldest then used = sum end\n"
"  end\n"
"  if not used then\n"
"    local all, dead, low = redis.call('HGETALL', x.data), {}, nil\n"
"    used = 0\n"
"    for j = 1, #all, 2 do\n"
"      if all[j] ~= '' then\n"
"        local idx = tonumber(all[j])\n"
"        if idx < oldest then dead[#dead + 1] = all[j]\n"
"        else\n"
"          used = used + tonumber(all[j + 1])\n"
"          if not low or idx < low then low = idx end\n"
"        end\n"
"      end\n"
"    end\n"
"    if low then\n"
"      hdel_all(x.data, dead)\n"
"      redis.call('HSET', x.data, '', string.format('%d:%d', used, low))\n"
"    elseif #all > 0 then\n"
"      redis.call('DEL', x.data)\n"
"    end\n"
"  end\n"
"  local v1 = redis.call('HGETALL', 'tollgate:v1:win:' .. x.key)\n"
"  x.v1 = v1\n"
"  for j = 1, #v1, 2 do\n"
"    local idx = tonumber(v1[j])\n"
"    if idx and idx >= oldest then used = used + tonumber(v1[j + 1]) end\n"
"  end\n"
"  return used\n"
"end\n"
"\n"
"-- the live sub-windows of x (v2 and v1, as window(x) left them), sorted;\n"
"-- read only for a reset_ms: most admissions have no excess\n"
"local function live_of(x)\n"
"  if x.live then return x.live end\n"
"  local live = {}\n"
"  for _, all in ipairs({ redis.call('HGETALL', x.data), x.v1 }) do\n"
"    for j = 1, #all, 2 do\n"
"      local idx = tonumber(all[j])\n"
"      if idx and idx >= x.oldest then live[#live + 1] = { idx, tonumber(all[j + 1]) } end\n"
"    end\n"
"  end\n"
"  table.sort(live, function(a, b) return a[1] < b[1] end)\n"
"  x.live = live\n"
"  return live\n"
"end\n"
"\n"
"-- ms until `excess` settled tokens have slid out of x's window\n"
"local function reset_after(x, excess)\n"
"  if excess <= 0 then return 0 end\n"
"  local gran = gran_of(x.win)\n"
"  for _, s in ipairs(live_of(x)) do\n"
"    excess = excess - s[2]\n"
"    if excess <= 0 then return (s[1] + 1) * gran + x.win - now end\n"
"  end\n"
"  return (math.floor(now / gran) + 1) * gran + x.win - now\n"
"end\n"
"\n"
"-- fill x.remaining and x.reset for `reserved`; true if the bucket admits\n"
"local function judge(x, reserved)\n"
"  x.reserved = reserved\n"
"  if x.win == 0 then\n"
"    x.remaining, x.reset = x.balance - reserved, 0\n"
"    if strict then return x.remaining - x.est >= 0 end\n"
"    return x.remaining > 0\n"
"  end\n"
"  x.remaining = x.limit - x.used - reserved\n"
"  local excess\n"
"  if strict then excess = x.used + reserved + x.est - x.limit\n"
"  else excess = x.used + reserved - x.limit + 1 end\n"
"  x.reset = reset_after(x, excess)\n"
"  return excess <= 0\n"
"end\n"
"\n"
"local b, refused, mine = {}, -1, {}\n"
"for i = 1, n do\n"
"  local a = 6 + (i - 1) * 6\n"
"  local x = { key = ARGV[a + 1], win = tonumber(ARGV[a + 2]), limit = tonumber(ARGV[a + 3]),\n"
"              est = tonumber(ARGV[a + 4]), wi = ARGV[a + 5], wo = ARGV[a + 6],\n"
"              data = KEYS[2 * i + 1], inf = KEYS[2 * i + 2], used = 0 }\n"
"  x.base, x.nxt = inflight(x.inf)\n"
"  if x.win > 0 then x.used = window(x)\n"
"  else x.balance = tonumber(redis.call('GET', x.data) or '0') or 0 end\n"
"  if not judge(x, x.base + (mine[x.inf] or 0)) and refused < 0 then refused = i - 1 end\n"
"  mine[x.inf] = (mine[x.inf] or 0) + x.est\n"
"  b[i] = x\n"
"end\n"
"\n"
"if refused < 0 then\n"
"  local exp = now + lease\n"
"  local rec, done = { string.format('%d|', exp) }, {}\n"
"  for i = 1, n do\n"
"    local x = b[i]\n"
"    if not done[x.inf] then\n"
"      local nxt = exp\n"
"      if x.nxt and x.nxt < nxt then nxt = x.nxt end\n"
"      redis.call('HSET', x.inf, rid, string.format('%d:%d', mine[x.inf], exp),\n"
"                 '', string.format('%d:%d', x.base + mine[x.inf], nxt))\n"
"      -- the hash lives as long as its latest lease: a hash that was there\n"
"      -- (x.nxt) has a TTL, and from Redis 7 'GT' extends it in one call\n"
"      if x.nxt and (redis.REDIS_VERSION_NUM or 0) >= 0x070000 then\n"
"        redis.call('PEXPIRE', x.inf, lease, 'GT')\n"
"      elseif redis.call('PTTL', x.inf) < lease then\n"
"        redis.call('PEXPIRE', x.inf, lease)\n"
"      end\n"
"      done[x.inf] = true\n"
"    end\n"
"    rec[#rec + 1] = string.format('%d|%s|%s|%d|', x.win, x.wi, x.wo, #x.key) .. x.key\n"
"  end\n"
"  redis.call('SET', KEYS[1], table.concat(rec), 'PX', lease + grace)\n"
"  -- the view after the reservation: what one more request would meet\n"
"  for i = 1, n do judge(b[i], b[i].base + mine[b[i].inf]) end\n"
"end\n"
"\n"
"local out = { refused < 0 and 1 or 0, refused }\n"
"for i = 1, n do\n"
"  local x = b[i]\n"
"  out[#out + 1] = x.used\n"
"  out[#out + 1] = x.reserved\n"
"  out[#out + 1] = x.remaining\n"
"  out[#out + 1] = x.reset\n"
"end\n"
"return out\n";

/* settle: replace a reservation by the real usage, once per rid.
 *   KEYS[1]        tollgate:v1:res:<rid>
 *   KEYS[2]        tollgate:v1:done:<rid>
 *   ARGV           rid, in, out, now_ms (-1: TIME), marker_ttl_ms
 * Returns 0 settled, 1 duplicate, 2 late (lease expired; still charged),
 * 3 unknown (no record; nothing charged). Each bucket is charged
 * ceil(in * w_in + out * w_out) (a product a hair above an integer counts as
 * that integer, as in store_mem.c), rate usage in the sub-window of `now`.
 * The bucket keys come from the record, so they are not in KEYS: fine on a
 * standalone Redis, not on a Cluster (see store_redis.h). */
static const char STORE_REDIS_LUA_SETTLE[] =
"-- tollgate settle v1\n"
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local rid, tin, tout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
"local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
"if now < 0 then\n"
"  local t = redis.call('TIME')\n"
"  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"end\n"
"-- the done marker and the record in one read (MGET: a key that is not a\n"
"-- string reads as nil, as GET's error would have stopped the call)\n"
"local got = redis.call('MGET', KEYS[2], KEYS[1])\n"
"if got[1] then return 1 end\n"
"local raw = got[2]\n"
"if not raw then return 3 end\n"
"-- the record: 'expiry|' then per bucket 'window|w_in|w_out|#key|key'\n"
"local pos = 1\n"
"local function field()\n"
"  local e = string.find(raw, '|', pos, true)\n"
"  local v = string.sub(raw, pos, e - 1)\n"
"  pos = e + 1\n"
"  return v\n"
"end\n"
"local rec = { x = tonumber(field()), b = {} }\n"
"while pos <= #raw do\n"
"  local w, wi, wo, len = tonumber(field()), field(), field(), tonumber(field())\n"
"  rec.b[#rec.b + 1] = { w = w, i = wi, o = wo, k = string.sub(raw, pos, pos + len - 1) }\n"
"  pos = pos + len\n"
"end\n"
"local function pair(v)\n"
"  local p = string.find(v, ':', 1, true)\n"
"  return tonumber(string.sub(v, 1, p - 1)), string.sub(v, p + 1)\n"
"end\n"
"-- take the reservation out of a bucket's in-flight hash and its sum; when\n"
"-- the sum falls to 0 nothing else in the hash holds tokens (the sum counts\n"
"-- every field until admit's scan removes a lapsed one with its estimate),\n"
"-- so the hash goes: a reservation of 0 still in it is then simply gone\n"
"-- and its own settlement finds nothing to take out\n"
"local function unreserve(ikey)\n"
"  local r = redis.call('HMGET', ikey, rid, '')\n"
"  local v, agg = r[1], r[2]\n"
"  if not v then return end\n"
"  if not agg then redis.call('HDEL', ikey, rid); return end\n"
"  local est = pair(v)\n"
"  local sum, nxt = pair(agg)\n"
"  if sum - est <= 0 then redis.call('DEL', ikey); return end\n"
"  redis.call('HDEL', ikey, rid)\n"
"  redis.call('HSET', ikey, '', string.format('%d:', sum - est) .. nxt)\n"
"end\n"
"for _, b in ipairs(rec.b) do\n"
"  unreserve('tollgate:v1:inf:' .. b.k)\n"
"  local amt = math.ceil(tin * tonumber(b.i) + tout * tonumber(b.o) - 1e-6)\n"
"  if amt > 0 then\n"
"    if b.w > 0 then\n"
"      local gran = 1\n"
"      if b.w > 60 then gran = math.ceil(b.w / 60) end\n"
"      local wkey, idx = 'tollgate:v2:win:' .. b.k, math.floor(now / gran)\n"
"      local f = string.format('%d', idx)\n"
"      local r = redis.call('HMGET', wkey, f, '')\n"
"      local cur, agg = tonumber(r[1]) or 0, r[2]\n"
"      local fresh = not r[1]\n"
"      -- the sub-window and the window's '' = 'sum:low' (admit's window())\n"
"      -- in one write; a hash without '' (never seen) gets the amount alone\n"
"      -- and is left for the next admission to rebuild\n"
"      if agg then\n"
"        local sum, low = pair(agg)\n"
"        low = tonumber(low)\n"
"        if idx < low then low = idx end\n"
"        redis.call('HSET', wkey, f, string.format('%d', cur + amt),\n"
"                   '', string.format('%d:%d', sum + amt, low))\n"
"      elseif redis.call('EXISTS', wkey) == 0 then\n"
"        redis.call('HSET', wkey, f, string.format('%d', amt), '', string.format('%d:%d', amt, idx))\n"
"      else\n"
"        redis.call('HINCRBY', wkey, f, string.format('%d', amt))\n"
"      end\n"
"      -- the key lives one window and two sub-windows past the first write\n"
"      -- to its newest sub-window: every older one slides out before, so\n"
"      -- later writes to the same sub-window need not push it further\n"
"      if fresh then redis.call('PEXPIRE', wkey, string.format('%d', b.w + 2 * gran)) end\n"
"    else\n"
"      redis.call('DECRBY', b.k, string.format('%d', amt))\n"
"    end\n"
"  end\n"
"end\n"
"local rc = 0\n"
"if now >= rec.x then rc = 2 end\n"
"redis.call('DEL', KEYS[1])\n"
"redis.call('SET', KEYS[2], rc, 'PX', ttl)\n"
"return rc\n";

/* charge: apply once the quota charge of a request admitted locally while
 * Redis was unavailable (replayed from the agent's queue).
 *   KEYS[1]        the quota balance K
 *   KEYS[2]        tollgate:v1:chg:<rid>:<i>
 *   ARGV           amount, marker_ttl_ms
 * Returns 0 applied, 1 already applied. */
static const char STORE_REDIS_LUA_CHARGE[] =
"-- tollgate charge v1\n"
"if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then\n"
"  redis.call('DECRBY', KEYS[1], ARGV[1])\n"
"  return 0\n"
"end\n"
"return 1\n";

/* batch: the admissions, settlements and charges one iteration of the
 * agent's loop sends, in ONE script call (one command for Redis to parse
 * and dispatch instead of one each). store_redis.c (batch_script()) puts
 * the three scripts above, unchanged, into `fns` as functions of (KEYS,
 * ARGV), between this head and this tail. Each call runs exactly as its
 * own EVALSHA would, in order, but for the clock: one TIME serves the
 * batch (one atomic step of Redis); a call whose script raises an error gets
 * that error as its element and the others are unaffected (what it wrote
 * before the error stays, as when it runs alone).
 *   KEYS     every call's keys, one call after the other
 *   ARGV     n, then per call: script (1 admit, 2 settle, 3 charge), its
 *            key count, its argument count, its arguments
 * Returns n elements: what each script returned, or its error. */
static const char STORE_REDIS_LUA_BATCH_HEAD[] =
"-- tollgate batch v1\n"
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local fns = {}\n";

static const char STORE_REDIS_LUA_BATCH_TAIL[] =
"-- one TIME for the batch (it runs at one instant): each call's now_ms\n"
"-- argument (admit: 5th, settle: 4th) of -1 becomes it\n"
"local now\n"
"local function clock(v)\n"
"  if v ~= '-1' then return v end\n"
"  if not now then\n"
"    local t = redis.call('TIME')\n"
"    now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
"  end\n"
"  return now\n"
"end\n"
"local out, k, a = {}, 0, 2\n"
"for i = 1, tonumber(ARGV[1]) do\n"
"  local id, nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])\n"
"  local f, keys, args = fns[id], {}, {}\n"
"  for j = 1, nk do keys[j] = KEYS[k + j] end\n"
"  for j = 1, na do args[j] = ARGV[a + 2 + j] end\n"
"  k, a = k + nk, a + 3 + na\n"
"  if id == 1 then args[5] = clock(args[5]) elseif id == 2 then args[4] = clock(args[4]) end\n"
"  local ok, r = pcall(f, keys, args)\n"
"  if not ok then\n"
"    if type(r) == 'table' and r.err then out[i] = r\n"
"    else out[i] = { err = 'ERR batch call ' .. i .. ': ' .. tostring(r) } end\n"
"  else\n"
"    out[i] = r\n"
"  end\n"
"end\n"
"return out\n";

#endif
