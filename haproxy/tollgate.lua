-- tollgate.lua -- Tollgate's Lua filter for HAProxy: `filter lua.tollgate`.
--
-- Owns, per doc/gateway.md ("Lua filter tollgate"):
--   1. the request body swap: when the agent rewrote the request body
--      (var txn.tg.body_new), the body forwarded upstream is replaced by it.
--      A rule already set content-length from txn.tg.body_len.
--   2. response metering of admitted requests (var txn.tg.rid set):
--      - SSE (text/event-stream): every chunk is observed as it passes and
--        forwarded at once; events split across chunks are reassembled for
--        parsing only. From `data:` lines it takes the provider's usage
--        (prompt_tokens|input_tokens, completion_tokens|output_tokens) into
--        txn.tg.u_in / txn.tg.u_out and counts the characters of generated
--        text into txn.tg.seen_chars, updated as data arrives (a client
--        abort skips the end callbacks). When txn.tg.hide_usage is true, the
--        usage-only event (empty `choices` + `usage`), which the gateway
--        asked for on the client's behalf, is removed; only a partial event
--        that may be that one is ever held back.
--      - JSON: the last 4 KiB of the body go to txn.tg.tail, and the usage
--        found there to u_in / u_out, so a body larger than HAProxy's buffer
--        (SPOP saw only its head) is still metered by the settlement record.
--
-- Load it with `lua-load-per-thread` (HAProxy 2.6.12: lua-load + nbthread > 1
-- + a Lua filter crashes under load). Filters cannot yield: no sockets, no
-- SPOE here. Every callback runs under pcall: on any error the filter stops
-- looking at that stream and forwards everything untouched; a Lua error must
-- never break a stream.

local TAIL_MAX  = 4096     -- bytes of a JSON body kept in txn.tg.tail
local HOLD_MAX  = 8192     -- largest partial event held back (hide_usage only)
local CARRY_MAX = 1048576  -- an event larger than this is not parsed
local NUM_MAX   = 15       -- digits: larger "numbers" are garbage

local Tollgate = {}
Tollgate.id = "tollgate"
Tollgate.flags = filter.FLT_CFG_FL_HTX
Tollgate.__index = Tollgate

-- ------------------------------------------------------------------ helpers

local function truthy(v)
	-- bool vars reach Lua as 1/0 on 2.6, as booleans on 3.1+ with
	-- tune.lua.bool-sample-conversion normal
	return v == true or v == 1 or v == "1" or v == "true"
end

-- A response header, through the sample fetch: HTTPMessage:get_headers()
-- raises an error once `http-response wait-for-body` has run (2.6.12).
local function res_header(txn, name)
	local v = txn.f:res_fhdr(name)
	if v == nil or v == "" then return nil end
	return v
end

-- Every search below is a plain find (memchr and memcmp) or a pattern
-- anchored where a plain find landed: an unanchored Lua pattern tries a
-- match at every byte (measured: 2 to 3 us for one search of a 250-byte
-- event, against 0.2 us for a plain find).

-- number of UTF-8 code points in d[i..j] (continuation bytes not counted;
-- invalid bytes count as one each)
local function u8len(d, i, j)
	if j < i then return 0 end
	local n = utf8.len(d, i, j, true)
	if n then return n end
	local _, c = d:sub(i, j):gsub("[^\128-\191]", "")
	return c
end

-- characters of the JSON string starting at index i (just after its opening
-- quote) in d; returns the count and the index after the closing quote
local function json_str_chars(d, i)
	local n, len = 0, #d
	while i <= len do
		local j = d:find('["\\]', i)
		if not j then return n + u8len(d, i, len), len + 1 end
		n = n + u8len(d, i, j - 1)
		if d:byte(j) == 34 then return n, j + 1 end
		if d:byte(j + 1) == 117 then          -- \uXXXX, a surrogate pair is one
			local cp = tonumber(d:sub(j + 2, j + 5), 16)
			if cp and cp >= 0xD800 and cp <= 0xDBFF and d:sub(j + 6, j + 7) == "\\u" then
				i = j + 12
			else
				i = j + 6
			end
		else
			i = j + 2
		end
		n = n + 1
	end
	return n, i
end

-- the first member from pos named by the quoted key in d whose value
-- matches pat (anchored just after the key): pat's capture, or nil
local function member(d, key, pat, pos)
	pos = pos or 1
	while true do
		local _, e = d:find(key, pos, true)
		if not e then return nil end
		local v = d:match(pat, e + 1)
		if v then return v end
		pos = e + 1
	end
end

-- total characters of the string values of the given keys (quoted) in d,
-- from index from (1 when nil)
local function count_fields(d, keys, from)
	local total = 0
	for i = 1, #keys do
		local pos = from or 1
		while true do
			local start = member(d, keys[i], '^%s*:%s*"()', pos)
			if not start then break end
			local n, nxt = json_str_chars(d, start)
			total = total + n
			pos = nxt
		end
	end
	return total
end

-- the end of the next SSE event in s from pos: a blank line, "\n\n" with
-- an optional "\r" before each "\n"; returns its first and last index
local function event_end(s, pos)
	local from = pos
	while true do
		local i = s:find("\n", pos, true)
		if not i then return nil end
		local j = i + 1
		if s:byte(j) == 13 then j = j + 1 end
		if s:byte(j) == 10 then
			if i > from and s:byte(i - 1) == 13 then return i - 1, j end
			return i, j
		end
		pos = i + 1
	end
end

local function tonum(s)
	if s and #s <= NUM_MAX then return math.tointeger(tonumber(s)) end
	return nil
end

-- u_in, u_out of a usage object (text)
local function usage_numbers(u)
	local i = u:match('"prompt_tokens"%s*:%s*(%d+)') or u:match('"input_tokens"%s*:%s*(%d+)')
	local o = u:match('"completion_tokens"%s*:%s*(%d+)') or u:match('"output_tokens"%s*:%s*(%d+)')
	return tonum(i), tonum(o)
end

local CHOICE_KEYS = { '"content"', '"reasoning_content"', '"reasoning"', '"text"',
                      '"arguments"', '"refusal"' }
local DELTA_KEYS  = { '"delta"' }                                -- Responses API *.delta
local BLOCK_KEYS  = { '"text"', '"thinking"', '"partial_json"' } -- content_block_delta

-- ------------------------------------------------------------------ filter

function Tollgate:new()
	local f = {}
	setmetatable(f, Tollgate)
	return f
end

function Tollgate:fail(txn, where, err)
	-- stop observing this stream, forward everything as is
	self.broken = true
	pcall(function()
		txn:set_var("txn.tg.lua_err", where)
		core.Warning("tollgate.lua: " .. where .. ": " .. tostring(err) .. " (rid " .. tostring(txn:get_var("txn.tg.rid")) .. ")")
	end)
end

function Tollgate:set_usage(txn, i, o)
	if i and i ~= self.u_in then self.u_in = i; txn:set_var("txn.tg.u_in", i) end
	if o and o ~= self.u_out then self.u_out = o; txn:set_var("txn.tg.u_out", o) end
end

-- the data of the event s[first..last] (it ends with its first separator
-- byte): its `data:` lines joined by "\n", and its type (`event:`); nil
-- when it has no data
local function event_fields(s, first, last)
	-- the common event: one `data:` line (the event ends with its first
	-- separator byte, the only "\n" or "\r" in it), its data cut straight
	-- from s
	if s:find("^data:", first) then
		local nl, cr = s:find("\n", first + 5, true), s:find("\r", first + 5, true)
		if (nl == nil or nl >= last) and (cr == nil or cr >= last) then
			local e = (nl == last or cr == last) and last - 1 or last
			return s:sub(s:byte(first + 5) == 32 and first + 6 or first + 5, e), nil
		end
	end
	local ev = s:sub(first, last)
	local data, etype = nil, nil
	for line in ev:gmatch("[^\r\n]+") do
		if line:sub(1, 5) == "data:" then
			local v = line:sub(6)
			if v:byte(1) == 32 then v = v:sub(2) end
			if data then data[#data + 1] = v else data = { v } end
		elseif line:sub(1, 6) == "event:" then
			etype = line:sub(7):match("^%s*(.-)%s*$")
		end
	end
	if not data then return nil end
	return #data == 1 and data[1] or table.concat(data, "\n"), etype
end

-- one complete SSE event, s[first..last]; returns true for a usage-only event
function Tollgate:sse_event(txn, s, first, last)
	local d, etype = event_fields(s, first, last)
	if not d or d == "[DONE]" then return false end

	local usage = member(d, '"usage"', '^%s*:%s*(%b{})')
	if usage then self:set_usage(txn, usage_numbers(usage)) end

	local n = 0
	local ch = d:find('"choices"', 1, true)
	if ch then
		-- the generated text is inside "choices": the members before it
		-- (id, object, created, model...) need not be searched six times
		n = count_fields(d, CHOICE_KEYS, ch + 9)
	else
		local t = etype or member(d, '"type"', '^%s*:%s*"([^"]*)"')
		if t then
			if t:sub(-6) == ".delta" then
				n = count_fields(d, DELTA_KEYS)
			elseif t == "content_block_delta" then
				n = count_fields(d, BLOCK_KEYS)
			end
		end
	end
	if n > 0 then self.chars = self.chars + n end

	return usage ~= nil and d:find('"choices"%s*:%s*%[%s*%]') ~= nil
end

-- could this partial event still turn out to be the usage-only one?
local function may_be_usage(p)
	if p:find('"choices"%s*:%s*%[%s*[^%s%]]') then return false end
	if p:find('[DONE]', 1, true) then return false end
	return true
end

function Tollgate:sse_payload(txn, msg)
	local n = msg:input()
	if not n or n <= 0 then return nil end
	local data = msg:body(0, n)
	if not data or #data == 0 then return nil end
	local carry = self.carry
	local clen = #carry
	local s = clen > 0 and (carry .. data) or data
	local pos, removed, chars0 = 1, 0, self.chars
	if self.skip then
		-- inside an event too large to parse: wait for its end
		local _, b = event_end(s, 1)
		if not b then
			self.carry = s:sub(-3)
			return nil
		end
		self.skip = false
		pos = b + 1
	end
	while true do
		local a, b = event_end(s, pos)
		if not a then break end
		local hide = self:sse_event(txn, s, pos, a)
		if hide and self.hide and pos > clen then
			local len = b - pos + 1
			msg:remove(pos - clen - 1 - removed, len)
			removed = removed + len
			self.hidden = self.hidden + 1
		end
		pos = b + 1
	end
	if self.chars ~= chars0 then txn:set_var("txn.tg.seen_chars", self.chars) end

	local rest = #s - pos + 1
	if rest > 0 and self.hide and pos > clen and rest <= HOLD_MAX
	   and not msg:eom() and not msg:is_full() and may_be_usage(s:sub(pos)) then
		-- hold back the start of what may be the usage-only event: HAProxy
		-- presents these bytes again with the next ones
		self.carry = ""
		return (#data - removed) - rest
	end
	if rest <= 0 then
		self.carry = ""
	elseif rest > CARRY_MAX then
		self.carry = ""
		self.skip = true
	else
		self.carry = (pos == 1) and s or s:sub(pos)
	end
	return nil
end

function Tollgate:json_payload(txn, msg)
	local n = msg:input()
	if n and n > 0 then
		-- the whole input, not an offset from its end: n may count the end
		-- of a chunked message, which body() does not return
		local data = msg:body(0, n)
		if data and #data > 0 then
			if #data > TAIL_MAX then data = data:sub(-TAIL_MAX) end
			local t = self.tail .. data
			if #t > 2 * TAIL_MAX then t = t:sub(-TAIL_MAX) end
			self.tail = t
		end
	end
	if msg:eom() then self:json_end(txn) end
	return nil
end

function Tollgate:json_end(txn)
	if self.json_done then return end
	self.json_done = true
	local t = self.tail
	if #t > TAIL_MAX then t = t:sub(-TAIL_MAX) end
	txn:set_var("txn.tg.tail", t)
	local last
	for u in t:gmatch('"usage"%s*:%s*(%b{})') do last = u end
	if last then self:set_usage(txn, usage_numbers(last)) end
end

-- msg:input() also counts the end of a chunked message (1 for the
-- end-of-trailers block, 2.6.12): only the bytes msg:body() returns are data,
-- and only those are replaced or removed, so the message still ends.
function Tollgate:req_payload(txn, msg)
	local n = msg:input() or 0
	local data = n > 0 and msg:body(0, n) or ""
	local dlen = data and #data or 0
	if self.swapped then
		if dlen > 0 then msg:remove(0, dlen) end
		return nil
	end
	local r = msg:set(self.body_new, 0, dlen)
	if not r or r < 0 then
		self.swapped = true
		txn:set_var("txn.tg.lua_err", "body_swap")
		core.Warning("tollgate.lua: request body swap failed (no room in the buffer)")
		return filter.ERROR
	end
	self.swapped = true
	return nil
end

-- ------------------------------------------------------------------ callbacks

local function headers_impl(self, txn, msg)
	local chn = msg.channel
	if not chn:is_resp() then
		local nb = txn:get_var("txn.tg.body_new")
		if nb ~= nil then
			self.body_new = tostring(nb)
			self.req_active = true
			filter.register_data_filter(self, chn)
		end
		return
	end
	if txn:get_var("txn.tg.rid") == nil then return end
	local ctype = (res_header(txn, "content-type") or ""):lower()
	local cenc = (res_header(txn, "content-encoding") or "identity"):lower()
	if cenc ~= "identity" and cenc ~= "" then return end  -- compressed: not parsed
	if ctype:find("text/event-stream", 1, true) then
		self.mode = "sse"
		self.carry, self.chars, self.hidden = "", 0, 0
		-- removing bytes needs a chunked (not content-length) answer
		self.hide = truthy(txn:get_var("txn.tg.hide_usage"))
		            and res_header(txn, "content-length") == nil
		txn:set_var("txn.tg.seen_chars", 0)
	elseif ctype:find("json", 1, true) then
		-- a body the SPOP response message carries whole is settled there:
		-- observing it too would only cost time (the renderer passes the
		-- size below which that holds)
		local cl = tonumber(res_header(txn, "content-length") or "")
		if cl and self.whole_below and cl < self.whole_below then return end
		self.mode = "json"
		self.tail = ""
	else
		return
	end
	self.res_active = true
	filter.register_data_filter(self, chn)
end

function Tollgate:http_headers(txn, msg)
	local ok, err = pcall(headers_impl, self, txn, msg)
	if not ok then self:fail(txn, "http_headers", err) end
	return filter.CONTINUE
end

-- HAProxy forwards the number of bytes returned; a nil return forwards
-- nothing (measured on 2.6.12), so "everything" is always explicit.
local function all(msg)
	local ok, n = pcall(msg.input, msg)
	return ok and n or 0
end

function Tollgate:http_payload(txn, msg)
	if self.broken then return all(msg) end
	local ok, ret
	if msg.channel:is_resp() then
		if not self.res_active then return all(msg) end
		if self.mode == "sse" then
			ok, ret = pcall(self.sse_payload, self, txn, msg)
		else
			ok, ret = pcall(self.json_payload, self, txn, msg)
		end
	else
		if not self.req_active then return all(msg) end
		ok, ret = pcall(self.req_payload, self, txn, msg)
	end
	if not ok then
		self:fail(txn, "http_payload", ret)
		return all(msg)
	end
	if ret == nil then return all(msg) end
	return ret
end

function Tollgate:http_end(txn, msg)
	if self.broken then return filter.CONTINUE end
	if msg.channel:is_resp() and self.res_active and self.mode == "json" then
		local ok, err = pcall(self.json_end, self, txn)
		if not ok then self:fail(txn, "http_end", err) end
	end
	return filter.CONTINUE
end

core.register_filter("tollgate", Tollgate, function(f, args)
	f.whole_below = tonumber(args and args[1] or "")
	return f
end)
