"""Hostile or broken policy files: each is refused with file:line:col and exit 2, never a hang,
a traceback or a silent skip (issue 10)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import run_cli

BASE = """\
database: {dsn: 'host=127.0.0.1 dbname=app'}
storage: {url: 'file:///srv/NAME'}
"""
# Nine levels of nine aliases: 9**9 (387 million) strings once expanded.
BILLION_LAUGHS = BASE + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9) if previous else ', '.join(['lol'] * 9)}]\n"
    for previous, name in zip([""] + list("abcdefgh"), "abcdefghi"))
GENEROUS_TIMEOUT = 300  # the loader answers in about a second; without its limits this never returns


def policy(name: str, extra: str = "") -> str:
    return BASE.replace("NAME", name) + extra


def test_billion_laughs_is_refused_with_its_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS.replace("NAME", "bomb"))
    result = run_cli("policy", "validate", str(path), timeout=GENEROUS_TIMEOUT)
    assert result.code == 2, result.output
    # line 8 is `f: &f [*e, ...]`, the first node that expands to more than 100,000 values
    assert f"{path}:8:4  refused: expands to more than 100000 values through aliases or merge keys" in result.stdout
    assert "Traceback" not in result.output


def test_ten_thousand_nested_lists_are_refused_at_depth_64(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(policy("deep", "backup: " + "[" * 10_000 + "]" * 10_000 + "\n"))
    result = run_cli("policy", "validate", str(path), timeout=GENEROUS_TIMEOUT)
    assert result.code == 2, result.output
    # the root mapping is level 1, `backup:` and its list level 2: the 65th level opens at column 72
    assert f"{path}:3:72  refused: nested deeper than 64 levels" in result.stdout
    assert "RecursionError" not in result.output and "internal error" not in result.output


BAD_FILES = {
    "alias_loop.yaml": (policy("alias-loop", "x: &x [1, *x]\n"),
                        "3:4  refused: an alias refers to a node that contains it"),
    "merge_loop.yaml": (policy("merge-loop", "x: &x {<<: *x, a: 1}\n"),
                        "3:4  refused: an alias refers to a node that contains it"),
    "python_tag.yaml": (policy("python-tag", "x: !!python/object/apply:os.system [id]\n"),
                        "3:4  refused: tag !!python/object/apply:os.system is not supported"),
    "custom_tag.yaml": (policy("custom-tag", "x: !vault secret\n"), "3:4  refused: tag !vault is not supported"),
    "list_key.yaml": (policy("list-key", "? [a, b]\n: 1\n"), "3:3  refused: a key must be a plain value"),
    "merge_scalar.yaml": (policy("merge-scalar", "backup: {<<: 5, schedule: '0 2 * * *'}\n"),
                          "3:14  refused: a merge key (<<) takes a mapping or a list of mappings"),
    "huge_int.yaml": (policy("huge-int", "backup: {schedule: '0 2 * * *', retention: {keep_last: " + "9" * 5000 + "}}\n"),
                      "3:56  refused: a number with more than 40 characters (5000)"),
    "bad_date.yaml": (policy("bad-date", "x: 2024-13-45\n"),
                      "3:4  refused: cannot read '2024-13-45' as a timestamp: month must be in 1..12"),
    "long_value.yaml": (policy("long-value", "name: " + "a" * 70_000 + "\n"),
                        "3:7  refused: a value longer than 64 KiB (70000 characters)"),
    "nul_byte.yaml": (policy("nul-byte", "name: a\x00b\n"),
                      "3:8  YAML syntax error: unacceptable character #x0000"),
    "two_docs.yaml": (policy("two-docs", "---\nname: b\n"),
                      "3:1  YAML syntax error: expected a single document in the stream but found another document"),
}


def test_every_refused_construct_is_reported_with_file_line_col_at_once(tmp_path: Path) -> None:
    for name, (text, _) in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "too_big.yaml").write_text(policy("too-big", "#" + "x" * (1024 * 1024) + "\n"))
    (tmp_path / "latin1.yaml").write_bytes(policy("latin1", "name: caf\xe9\n").encode("latin-1"))
    result = run_cli("policy", "validate", str(tmp_path), timeout=GENEROUS_TIMEOUT)
    assert result.code == 2, result.output
    for name, (_, expected) in BAD_FILES.items():
        assert f"{tmp_path / name}:{expected}" in result.stdout, (name, result.stdout)
    assert f"{tmp_path / 'too_big.yaml'}:1:1  refused: larger than 1024 KiB" in result.stdout
    assert f"{tmp_path / 'latin1.yaml'}:1:1  cannot read: not UTF-8 text (byte " in result.stdout
    assert f"{len(BAD_FILES) + 2} errors in policy files" in result.stderr
    assert "Traceback" not in result.output


def test_a_policy_directory_skips_nothing_silently(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(policy("good"))
    (tmp_path / "broken.yaml").symlink_to(tmp_path / "gone.yaml")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "folder.yaml").mkdir()
    os.mkfifo(tmp_path / "pipe.yml")  # reading it would block the worker forever
    (tmp_path / "device.yaml").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "notes.txt").write_text("not a policy")
    result = run_cli("policy", "validate", str(tmp_path), timeout=GENEROUS_TIMEOUT)
    assert result.code == 2, result.output
    lines = set(result.stdout.splitlines())
    assert lines == {
        f"{tmp_path / 'broken.yaml'}:1:1  broken symbolic link (points to {tmp_path / 'gone.yaml'}, which does not exist)",
        f"{tmp_path / 'loop.yaml'}:1:1  symbolic link loop (the link points, directly or not, to itself)",
        f"{tmp_path / 'folder.yaml'}:1:1  is a directory, not a policy file",
        f"{tmp_path / 'pipe.yml'}:1:1  is not a regular file (a device, pipe or socket)",
        f"{tmp_path / 'device.yaml'}:1:1  is not a regular file (a device, pipe or socket)",
    }, result.stdout
    named = run_cli("--policies", str(tmp_path), "backup", "broken", timeout=GENEROUS_TIMEOUT)
    assert named.code == 2 and "broken.yaml:1:1  broken symbolic link" in named.stderr, named.output
    direct = run_cli("policy", "validate", str(tmp_path / "loop.yaml"), str(tmp_path / "good.yaml"))
    assert direct.code == 2 and "loop.yaml:1:1  symbolic link loop" in direct.stdout, direct.output


DURATIONS = [
    ("99999999999y", "too long: at most 100y"),
    ("101y", "too long: at most 100y"),
    ("1e400d", "not a duration"),
    ("-5d", "not a duration"),
    ("0d", "a duration must be greater than zero"),
    ("9" * 200 + "s", "too long: at most 100y"),
]


def test_durations_out_of_range_name_file_line_and_the_allowed_range(tmp_path: Path) -> None:
    tables = "".join(f"    - {{table: public.t{index}, archive_after: '{text}'}}\n"
                     for index, (text, _) in enumerate(DURATIONS))
    path = tmp_path / "durations.yaml"
    path.write_text(policy("durations", "archive:\n  schedule: '0 3 * * *'\n  tables:\n" + tables +
                           "backup:\n  schedule: '0 2 * * *'\n  pg_dump: {lock_wait_timeout: 30d}\n"
                           "  retention: {keep_last: 99999999999999999999, min_keep: 0}\n"))
    result = run_cli("policy", "validate", str(path))
    assert result.code == 2, result.output
    for index, (text, message) in enumerate(DURATIONS):
        line = 6 + index
        assert f"{path}:{line}:" in result.stdout and f"archive.tables[{index}].archive_after: {message}" in result.stdout
        assert "expected a whole number" not in result.stdout, "what is allowed is said once, after 'allowed'"
        shown = text if len(text) <= 60 else text[:57] + "..."
        assert f"(got {shown!r}; allowed a number and a unit: s, min, h, d, w, mo (30 days), y (365 days) (e.g. 90d, 12h, 2y), " \
               "from 1s up to 100y)" in result.stdout, text
    assert f"{path}:14:" in result.stdout and "backup.pg_dump.lock_wait_timeout: too long: at most 24d" in result.stdout
    assert f"{path}:15:26  backup.retention.keep_last: out of range (got 99999999999999999999; allowed 0..1000000)" \
        in result.stdout
    assert f"{path}:15:58  backup.retention.min_keep: out of range (got 0; allowed 1..1000000)" in result.stdout
    assert "internal error" not in result.output


def test_every_command_refuses_a_bomb_in_the_policy_directory(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BILLION_LAUGHS.replace("NAME", "bomb"))
    shown = run_cli("--policies", str(tmp_path), "policy", "show", "bomb", timeout=GENEROUS_TIMEOUT)
    assert shown.code == 2 and "bomb.yaml:8:4  refused: expands to more than 100000 values" in shown.stderr, shown.output
    worker = run_cli("--policies", str(tmp_path), "worker", "--port", "0", timeout=GENEROUS_TIMEOUT)
    assert worker.code == 2, worker.output
    assert "bomb.yaml:8:4  refused: expands to more than 100000 values" in worker.stderr  # policy.invalid, logged
    assert "no valid policy in" in worker.stderr


def test_storage_settings_that_would_end_in_a_traceback_are_policy_errors(tmp_path: Path) -> None:
    cases = {
        "endpoint.yaml": ("storage: {url: 's3://bucket-aa/x', endpoint_url: 'not a url'}",
                          "2:50  storage.endpoint_url: not an http(s) URL (got 'not a url'"),
        "port.yaml": ("storage: {url: 's3://bucket-aa/y', endpoint_url: 'http://minio:99999'}",
                      "2:50  storage.endpoint_url: has an invalid port (got 'http://minio:99999'; allowed 1..65535)"),
        "region.yaml": ("storage: {url: 's3://bucket-aa/z', region: 'bad region!'}",
                        "2:44  storage.region: invalid value (got 'bad region!'"),
        "dotdot.yaml": ("storage: {url: 's3://bucket-aa/../../x'}",
                        "2:16  storage.url: the prefix may not hold empty, '.' or '..' parts"),
        "query.yaml": ("storage: {url: 's3://bucket-aa/q?versionId=1'}",
                       "2:16  storage.url: a storage URL takes no ?query or #fragment"),
        "filedots.yaml": (f"storage: {{url: 'file://{tmp_path}/a/../b'}}",
                          "2:16  storage.url: the path may not hold '.' or '..' parts"),
    }
    for name, (storage, _) in cases.items():
        (tmp_path / name).write_text(f"database: {{dsn: 'host=127.0.0.1 dbname=app'}}\n{storage}\n")
    result = run_cli("policy", "validate", str(tmp_path))
    assert result.code == 2, result.output
    for name, (_, expected) in cases.items():
        assert f"{tmp_path / name}:{expected}" in result.stdout, (name, result.stdout)


def test_a_webhook_url_that_is_not_http_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "hook.yaml"
    path.write_text(policy("hook", "notify: {webhook_url: '${HOOK_URL}'}\n"))
    env = {**os.environ, "HOOK_URL": "hooks.example.com/services/T0/B0/Zk4rTq9wXy"}
    result = run_cli("policy", "validate", "--check-env", str(path), env=env)
    assert result.code == 2, result.output
    assert f"{path}:3:23  notify.webhook_url: is not an http(s) URL once read from the environment" in result.stdout
    assert "Zk4rTq9wXy" not in result.output and "hooks.example.com" not in result.output
    fine = run_cli("policy", "validate", "--check-env", str(path), env={**env, "HOOK_URL": "https://" + env["HOOK_URL"]})
    assert fine.code == 0, fine.output


def test_a_schedule_that_never_fires_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "never.yaml"
    path.write_text(policy("never", "backup: {schedule: '0 2 31 2 *'}\nverify: {schedule: '0 5 * * \u0663'}\n"))
    result = run_cli("policy", "validate", str(path))
    assert result.code == 2, result.output
    assert f"{path}:3:20  backup.schedule: bad cron expression: never fires (a day the month never has, such as 31 " \
           "in February)" in result.stdout
    assert f"{path}:4:20  verify.schedule: bad cron expression: day-of-week '\u0663' is not 0-7" in result.stdout
