"""The whole offline job on the tiny config: corpus -> teacher -> train -> export -> parity -> bundle.

Also: resume after an interrupt continues from the checkpoint, DDP under torchrun (2 procs, gloo) trains,
and the bundle loads in the serving runtime and embeds exactly what the torch checkpoint does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
# The tiny corpus is STS-B train; without it the job (and DDP, behind a gloo error) fails on a missing source.
pytestmark = pytest.mark.requires_stsb

REPO = Path(__file__).resolve().parents[2]
TINY = "training/configs/tiny.toml"


def _job(*args: str, cwd: Path = REPO, torchrun: bool = False, timeout: float = 400) -> str:
    proc = _run_job(*args, cwd=cwd, torchrun=torchrun, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _run_job(
    *args: str, cwd: Path = REPO, torchrun: bool = False, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    head = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.run(
        [*head, "-m", "training.train", "--config", TINY, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _log(work: Path) -> list[dict[str, object]]:
    lines = (work / "runs" / "tiny" / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("work")
    bundle = work / "bundle"
    _job("--work-dir", str(work), "--out-dir", str(bundle))
    return work, bundle


def test_tiny_job_writes_a_verified_bundle_with_parity(tiny_run: tuple[Path, Path]) -> None:
    from embedder.core.bundle import load_bundle

    work, bundle = tiny_run
    manifest = load_bundle(bundle).manifest
    assert manifest.dim == 384 and manifest.max_tokens == 64
    assert manifest.parameters > 900_000
    assert manifest.source["config"]["name"] == "tiny"
    assert manifest.source["git_commit"]
    assert 0.0 <= manifest.metrics["parity_max_abs_diff"] <= 1e-4
    assert -100 < manifest.metrics["stsb_dev_spearman"] <= 100
    report = json.loads((work / "runs" / "tiny" / "report.json").read_text())
    assert report["variants"]["fp32"]["items_per_s"] > 0
    steps = [row["step"] for row in _log(work) if "loss" in row]
    assert steps[-1] == 20
    # v2 recipe on the tiny scale: minimal pairs joined the batches, the Matryoshka prefixes are listed
    # in the manifest and scored, attention pooling exported with an exact explain graph.
    assert manifest.matryoshka_dims == [16, 32]
    assert "stsb_dev_spearman@16" in manifest.metrics
    assert "attention pool" in manifest.architecture
    pair_losses = [row["pair"] for row in _log(work) if "pair" in row]
    assert pair_losses and all(v >= 0 for v in pair_losses)
    assert manifest.source["teacher_precision"]["precision"] in {"bf16", "fp32"}
    assert manifest.source["teacher_precision"]["backend"] in {"torch", "onnx"}


def _served(bundle: Path, texts: list[str], *flags: str) -> np.ndarray:
    """What the serving runtime embeds for `texts` (`embedder.cli embed`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "embedder.cli", "embed", "--bundle", str(bundle), *flags, *texts],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return np.array([json.loads(line)["embedding"] for line in proc.stdout.splitlines()], dtype=np.float32)


def test_bundle_serves_what_the_checkpoint_computes(tiny_run: tuple[Path, Path]) -> None:
    from training.student import encode, load_model

    work, bundle = tiny_run
    texts = ["a man is playing a guitar", "Debian package: a tiny text editor for the terminal", "ok"]
    served = _served(bundle, texts, "--no-normalize")
    model = load_model(work / "runs" / "tiny" / "last.pt")
    expected = encode(model, texts, max_tokens=64)
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    _job("--work-dir", str(tmp_path), "--stop-after", "train", "--set", "train.steps=10")
    _job("--work-dir", str(tmp_path), "--stop-after", "train", "--set", "train.steps=20")
    steps = [row["step"] for row in _log(tmp_path) if "loss" in row]
    assert steps == [5, 10, 15, 20]  # second run picked up at step 10, did not redo 1..10


def test_a_checkpoint_of_another_model_shape_is_refused_in_one_line(tmp_path: Path) -> None:
    # E.g. the run directory an older default config left: resuming it into a new shape must not crash
    # in load_state_dict with a traceback.
    _job("--work-dir", str(tmp_path), "--stop-after", "train", "--set", "train.steps=5")
    proc = _run_job("--work-dir", str(tmp_path), "--stop-after", "train", "--set", "model.embed_dim=40")
    assert proc.returncode == 1
    assert "checkpoint of another model ([model] embed_dim differ)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ddp_two_processes_train(tmp_path: Path) -> None:
    _job("--work-dir", str(tmp_path), "--stop-after", "train", torchrun=True)
    import torch

    ckpt = torch.load(tmp_path / "runs" / "tiny" / "last.pt", weights_only=False)
    assert ckpt["step"] == 20
    assert ckpt["config"]["model"]["channels"] == 32


def test_per_token_distillation_trains_on_the_teachers_position_states(tiny_run: tuple[Path, Path]) -> None:
    work, _ = tiny_run  # its corpus, pairs and pooled targets are cached: only the position states are new
    args = ("--work-dir", str(work), "--stop-after", "train", "--run-name", "tokens")
    _job(*args, "--set", "train.w_token=1.0")
    stores = sorted(p.name.split("-")[0] for p in (work / "teacher" / "tokens").glob("*.f16"))
    assert stores == ["edits", "train"]
    rows = [json.loads(line) for line in (work / "runs" / "tokens" / "log.jsonl").read_text().splitlines()]
    token = [row["token"] for row in rows if "token" in row]
    assert len(token) == 4 and all(0 < v < 10 for v in token)
    assert token[-1] < token[0]  # the fraction of the states' variance left unexplained goes down


def test_the_gold_label_term_ranks_sts_train_pairs_in_the_same_steps(tiny_run: tuple[Path, Path]) -> None:
    work, _ = tiny_run
    _job("--work-dir", str(work), "--stop-after", "train", "--run-name", "gold", "--set", "train.w_sts=1.0")
    assert len(list((work / "tokens").glob("sts-*.npz"))) == 1
    rows = [json.loads(line) for line in (work / "runs" / "gold" / "log.jsonl").read_text().splitlines()]
    sts = [row["sts"] for row in rows if "sts" in row]
    # CoSENT over 32 pairs starts near log(#ordered pairs) ~ 6 and stays finite.
    assert len(sts) == 4 and all(0 < v < 20 for v in sts)


def _requantize(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "training.requantize", "--config", TINY, "--work-dir", str(work), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_requantize_rewrites_an_fp32_bundle_and_refuses_a_quantised_one(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from embedder.core.bundle import load_bundle

    work, fp32 = tiny_run
    out = tmp_path / "int8"
    proc = _requantize(work, "--bundle", str(fp32), "--out-dir", str(out), "--variant", "int8-pointwise")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_bundle(fp32).manifest, load_bundle(out).manifest  # hashes verified, explain too
    assert after.source["variant"] == "int8-pointwise" and after.version == "0.0.2"
    record = after.source["requantized"]
    assert record["chosen"] == "int8-pointwise" and set(record["variants"]) == {
        "fp32",
        "int8-dynamic",
        "int8-pointwise",
    }
    assert after.sha256 != before.sha256 and after.explain_sha256 != before.explain_sha256
    assert after.metrics["stsb_dev_spearman"] == record["variants"]["int8-pointwise"]["stsb_dev_spearman"]
    texts = ["a man is playing a guitar", "Debian package: a tiny text editor for the terminal"]
    cosines = (_served(fp32, texts) * _served(out, texts)).sum(axis=1)  # both L2-normalised
    assert float(cosines.min()) > 0.99  # int8 rounding, not another model
    again = _requantize(work, "--bundle", str(out), "--out-dir", str(tmp_path / "again"))
    assert again.returncode == 1
    assert again.stderr.strip().endswith("variant 'int8-pointwise'; requantize starts from an fp32 bundle")
    assert "Traceback" not in again.stderr and not (tmp_path / "again").exists()
