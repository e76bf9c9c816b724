"""test_config_check.py -- `tollgate check --config FILE` on good and bad files.

What it proves, with the built ${BUILD:-build}/tollgate:
  - examples/token-control.yaml and tests/configs/good-*.yaml are accepted
    (exit 0, "ok" on stdout), with and without their environment variables;
  - the seed's ai-quota and ai-token-ratelimit blocks are accepted verbatim,
    pasted as the Higress console takes them;
  - every tests/configs/bad-*.yaml is refused with exit 1 and a message on
    stderr naming the path of the bad key (its first line says
    "# expect: TEXT", TEXT must appear in stderr);
  - ${VAR} substitution happens before typing and validation;
  - unreadable files are refused naming the file;
  - secrets (credentials, passwords) never appear in the messages.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))

from tcase import case, main  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = os.path.join(REPO, "tests", "configs")
EXAMPLE = os.path.join(REPO, "examples", "token-control.yaml")

# Every variable the example and the fixtures read: cleared so the defaults apply.
EXAMPLE_VARS = ["TOLLGATE_LISTEN", "TOLLGATE_HTTP", "TOLLGATE_STATE_DIR",
                "TOLLGATE_LOG_LEVEL", "REDIS_URL", "REDIS_ADDR", "PROVIDER_TYPE",
                "QWEN_BASE_URL", "DASHSCOPE_API_KEY", "DASHSCOPE_API_KEY_2", "AZURE_KEY",
                "ADMIN_KEY", "USER1_KEY", "USER2_KEY", "REDIS_PASSWORD"]


def binary():
    b = os.environ.get("BUILD", "build")
    if not os.path.isabs(b):
        b = os.path.join(REPO, b)
    path = os.path.join(b, "tollgate")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError("%s is not built (make BUILD=%s)"
                                % (path, os.environ.get("BUILD", "build")))
    return path


def check(path, env=None):
    """Run tollgate check --config path; return (exit code, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items() if k not in EXAMPLE_VARS}
    e.update(env or {})
    p = subprocess.run([binary(), "check", "--config", path], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def check_text(text, env=None):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="tg-check-",
                                     delete=False) as f:
        f.write(text)
        path = f.name
    try:
        return check(path, env)
    finally:
        os.unlink(path)


def assert_ok(rc, out, err, what):
    assert rc == 0, "%s refused (exit %d): %s" % (what, rc, err)
    assert "ok" in out, "%s: no 'ok' on stdout: %r" % (what, out)


def assert_refused(rc, out, err, expect, what):
    assert rc == 1, "%s: exit %d, want 1 (stdout %r, stderr %r)" % (what, rc, out, err)
    assert expect in err, "%s: stderr %r does not contain %r" % (what, err, expect)
    assert "ok" not in out.split(), "%s: 'ok' printed for a refused file" % what


def fixtures(prefix):
    return sorted(os.path.join(CONFIGS, f) for f in os.listdir(CONFIGS)
                  if f.startswith(prefix) and f.endswith(".yaml"))


# The seed's plugin blocks, exactly as the walkthrough gives them.
SEED_AI_QUOTA = """\
redis_key_prefix: 'chat_quota:'
admin_consumer: aliyun-admin
admin_path: /quota
redis:
  service_name: local-redis.static
  service_port: 80
  timeout: 2000
"""

SEED_AI_TOKEN_RATELIMIT = """\
rule_items:
- limit_by_per_header: x-api-key
  limit_keys:
  - key: "*"
    token_per_minute: 5 #每分钟限流5个
rule_name: "default_rule"

redis:
  service_name: local-redis.static
  service_port: 80
"""


def indent(text, n):
    return "".join((" " * n + line) if line.strip() else line
                   for line in text.splitlines(True))


SEED_CONFIG = """\
services:
  - { name: local-redis, type: static, address: "127.0.0.1:6379" }
providers:
  - { name: aliyun, type: mock }
consumers:
  - { name: aliyun-admin, credential: admin-key }
  - { name: aliyun-user1, credential: user1-key }
  - { name: aliyun-user2, credential: user2-key }
key_auth: { keys: [x-api-key], in_header: true }
routes:
  - name: aliyun
    provider: aliyun
    auth: { enabled: true, allow: [aliyun-admin, aliyun-user1, aliyun-user2] }
    plugins:
      ai-quota:
%s      ai-token-ratelimit:
%s""" % (indent(SEED_AI_QUOTA, 8), indent(SEED_AI_TOKEN_RATELIMIT, 8))


@case
def example_is_accepted():
    assert_ok(*check(EXAMPLE), what="examples/token-control.yaml")


@case
def example_with_its_environment():
    env = {"PROVIDER_TYPE": "qwen", "DASHSCOPE_API_KEY": "sk-test",
           "REDIS_ADDR": "172.17.0.2:6379", "ADMIN_KEY": "a", "USER1_KEY": "b",
           "USER2_KEY": "c", "TOLLGATE_STATE_DIR": "/tmp/tg-state"}
    assert_ok(*check(EXAMPLE, env), what="example with env")
    # substituted before typing: a bad value from the environment is refused
    rc, out, err = check(EXAMPLE, {"PROVIDER_TYPE": "gemini"})
    assert_refused(rc, out, err, "providers[0].type: must be one of", "PROVIDER_TYPE=gemini")
    rc, out, err = check(EXAMPLE, {"TOLLGATE_LOG_LEVEL": "loud"})
    assert_refused(rc, out, err, "agent.log_level:", "TOLLGATE_LOG_LEVEL=loud")
    rc, out, err = check(EXAMPLE, {"REDIS_ADDR": "nowhere"})
    assert_refused(rc, out, err, "services[0].address:", "REDIS_ADDR=nowhere")
    # two consumers with the same key: the second is named, the key is not shown
    rc, out, err = check(EXAMPLE, {"ADMIN_KEY": "same-secret-1", "USER2_KEY": "same-secret-1"})
    assert_refused(rc, out, err, "consumers[2].credential:", "duplicate credential")
    assert "same-secret-1" not in out + err, err


@case
def seed_plugin_blocks_verbatim():
    assert_ok(*check_text(SEED_CONFIG), what="seed blocks")


@case
def good_fixtures_are_accepted():
    files = fixtures("good-")
    assert len(files) >= 3, files
    for path in files:
        assert_ok(*check(path), what=os.path.basename(path))


@case
def bad_fixtures_name_the_path():
    files = fixtures("bad-")
    assert len(files) >= 10, files
    for path in files:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        assert first.startswith("# expect: "), "%s: no '# expect:' line" % path
        expect = first[len("# expect: "):].rstrip("\n")
        assert_refused(*check(path), expect=expect, what=os.path.basename(path))


@case
def unknown_key_deep_path():
    text = SEED_CONFIG.replace("  limit_keys:", "  limit_keyz:")
    rc, out, err = check_text(text)
    assert_refused(rc, out, err,
                   "routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_keyz: unknown key",
                   "limit_keyz")


@case
def unset_variable_is_empty():
    text = "consumers:\n  - { name: a, credential: \"${TG_CHECK_SURELY_UNSET}\" }\n"
    rc, out, err = check_text(text)
    assert_refused(rc, out, err, "consumers[0].credential: empty", "unset credential")
    assert_ok(*check_text(text, {"TG_CHECK_SURELY_UNSET": "k1"}), what="credential from env")
    text = "agent: { max_frame_size: \"${TG_CHECK_FRAME:-65536}\" }\n"
    assert_ok(*check_text(text), what="integer from a default")
    rc, out, err = check_text(text, {"TG_CHECK_FRAME": "12"})
    assert_refused(rc, out, err, "agent.max_frame_size: must be between 256", "frame 12")


@case
def wrong_types_name_the_path():
    cases = [
        ("agent: [1]\n", "agent: expected a mapping, got a list"),
        ("routes: { r: 1 }\n", "routes: expected a list, got a mapping"),
        ("agent: { debug_messages: perhaps }\n", "agent.debug_messages: expected a boolean"),
        ("agent: { idle_timeout: soon }\n", "agent.idle_timeout: expected a duration"),
        ("store: { failure_mode: maybe }\n", "store.failure_mode: must be one of local, open, closed"),
        ("haproxy: { timeouts: { clinet: 1s } }\n",
         "haproxy.timeouts.clinet: unknown key (did you mean client?)"),
    ]
    for text, expect in cases:
        assert_refused(*check_text(text), expect=expect, what=text.strip())


@case
def unreadable_file_is_named():
    path = "/nonexistent/dir/tollgate.yaml"
    rc, out, err = check(path)
    assert_refused(rc, out, err, path, "missing file")


@case
def redis_password_never_shown():
    rc, out, err = check_text("store: { redis: \"redis://:hunter2-pw@localhost:99999\" }\n")
    assert_refused(rc, out, err, "store.redis: ", "bad redis port")
    assert "hunter2-pw" not in out + err, err


if __name__ == "__main__":
    main()
