"""The resume checkpoint holds tensors and plain values only; anything else is refused unrun."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams  # noqa: E402

from fundusfm.task import TaskSpec  # noqa: E402
from fundusfm.train.cli import train_main as main  # noqa: E402
from fundusfm.train.config import resolve_hparams  # noqa: E402
from fundusfm.train.engine import Preempted, RunSpec, Trainer  # noqa: E402
from fundusfm.train.resume import ResumeError, load_state, plain_problem, save_state  # noqa: E402

torch.set_num_threads(1)


class Payload:
    """Unpickling calls ``open(marker, 'w')``: the file appears only if the payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _spec(table: Path, out: Path) -> RunSpec:
    return RunSpec(table=str(table), fold=0, fraction=1.0, seed=1, task=TaskSpec.from_dict(json.loads(BINARY_TASK)),
                   init="random", hparams=resolve_hparams(json.loads(tiny_hparams(epochs=3))), out=str(out),
                   device="cpu", workers=0)


def _cli(table: Path, out: Path) -> list[str]:
    return ["--table", str(table), "--fold", "0", "--fraction", "1.0", "--seed", "1", "--task-json", BINARY_TASK,
            "--init", "random", "--hparams-json", tiny_hparams(epochs=3), "--out", str(out),
            "--device", "cpu", "--workers", "0"]


def _preempted_state(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A real resume state: a run asked to stop checkpoints after its first step."""
    table = make_task_table(tmp_path, n=32, n_external=0)
    out = tmp_path / "run"
    trainer = Trainer(_spec(table, out))
    trainer._signal = signal.SIGTERM  # as if SIGTERM arrived before the first step ended
    with pytest.raises(Preempted):
        trainer.fit()
    state = out / ".resume" / "state.pt"
    assert state.is_file()
    return table, out, state


def test_resume_state_of_a_real_run_is_plain_and_loads_weights_only(tmp_path):
    _, _, path = _preempted_state(tmp_path)
    state = load_state(path)  # weights_only=True inside
    assert plain_problem(state) is None
    assert state["epoch"] == 0 and state["step"] == 1
    assert set(state["model"]) and all(torch.is_tensor(v) for v in state["model"].values())


def test_planted_pickle_payload_in_resume_state_is_refused_and_never_runs(tmp_path, capsys):
    table, out, path = _preempted_state(tmp_path)
    state = torch.load(path, weights_only=False)
    marker = tmp_path / "payload-ran"
    state["history"] = [Payload(marker)]  # a colleague's tree, a restored backup: one foreign object
    torch.save(state, path)

    with pytest.raises(ResumeError, match=r"state\.pt: refused.*nothing of it was run"):
        Trainer(_spec(table, out)).fit()
    assert main(_cli(table, out)) == 1  # the CLI: one line, no traceback
    err = capsys.readouterr().err.strip()
    assert err.startswith("fundusfm train: ") and "state.pt: refused" in err and "\n" not in err
    assert "Traceback" not in err
    assert not marker.exists(), "the planted payload ran"
    assert not (out / "model.safetensors").exists()

    # the payload is live: an unrestricted unpickler would have run it (so this test can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_save_refuses_anything_but_tensors_and_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\]: a .*Payload"):
        save_state({"history": [Payload(tmp_path / "x")]}, tmp_path / "state.pt")
    assert not (tmp_path / "state.pt").exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file"], ids=["empty", "garbage"])
def test_unreadable_resume_state_names_the_file(tmp_path, content):
    path = tmp_path / "state.pt"
    path.write_bytes(content)
    with pytest.raises(ResumeError, match=r"state\.pt: unreadable resume state"):
        load_state(path)


def test_resume_state_without_the_run_keys_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"model": {}, "epoch": 1}, path)
    with pytest.raises(ResumeError, match=r"key 'fingerprint' missing"):
        load_state(path)
