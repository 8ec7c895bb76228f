"""Acceptance of the pipeline: the same rows as the straightforward path, one lock per output folder, auto workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from safety_modules.gate.vision_scorer import load_flagger
from safety_modules.images import ImageDecodeError, bound_aspect, decode_image
from safety_modules.output_lock import LOCK_NAME, OutputLock
from safety_modules.scan import (
    CorpusReader,
    ScanLockedError,
    ScanSettings,
    VisionScorer,
    read_parts,
    run_scan,
)
from safety_modules.scan.readers import ItemError, load_bytes

from ..scan_corpus import (
    broken_images,
    plain_images,
    unusual_images,
    write_folder,
)
from .test_pixels import photo_jpegs


def straightforward_rows(corpus, tiny_dir, safety_dir) -> list[dict]:
    """The reference: each item decoded by `decode_image`, preprocessed by the image processor, scored alone."""
    scorer = VisionScorer.from_pretrained(tiny_dir, safety_dir, device="cpu", dtype="fp32")
    flagger = load_flagger(None, scorer.taxonomy)
    rows = []
    for index, item in enumerate(CorpusReader(corpus)):
        row = {"index": index, "id": item.id, "error_kind": None}
        try:
            image = bound_aspect(decode_image(load_bytes(item)))
        except (ItemError, ImageDecodeError) as exc:
            row["error_kind"] = exc.kind
            rows.append(row)
            continue
        pixels = scorer.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        level_probs, type_probs = scorer.score(pixels)
        row["probs"] = np.concatenate([type_probs[0], level_probs[0]])
        row["flagged"] = bool(flagger.flag(level_probs, type_probs)[0])
        rows.append(row)
    return rows


@pytest.mark.parametrize("corpus_kind", ["broken_and_unusual", "photos"])
def test_rows_match_the_straightforward_path(tiny_dir, safety_dir, tmp_path, photos, corpus_kind):
    if corpus_kind == "photos":
        files = photo_jpegs(photos)
    else:
        files = {**plain_images(3), **unusual_images(), **{k: v for k, (v, _) in broken_images().items()}}
    corpus = write_folder(tmp_path / "corpus", files)
    # Pinned to CPU float32 on any machine: the 1e-5 acceptance is about the pipeline, not the device.
    settings = ScanSettings(
        base=str(tiny_dir), safety=str(safety_dir), workers=2, batch_size=3, part_size=5, device="cpu", dtype="fp32"
    )
    run_scan(corpus, tmp_path / "out", settings, progress=False)
    table = read_parts(tmp_path / "out")
    expected = straightforward_rows(corpus, tiny_dir, safety_dir)
    assert table.column("index").to_pylist() == [r["index"] for r in expected]
    assert table.column("id").to_pylist() == [r["id"] for r in expected]
    assert table.column("error_kind").to_pylist() == [r["error_kind"] for r in expected]
    scored = [i for i, r in enumerate(expected) if r["error_kind"] is None]
    assert len(scored) >= 13
    names = [f"p_{t}" for t in VisionScorer.from_pretrained(tiny_dir, safety_dir).taxonomy.types]
    names += [c for c in table.column_names if c.startswith("p_level_")]
    got = np.stack([np.array(table.column(c).to_pylist(), dtype=float) for c in names], axis=1)
    np.testing.assert_allclose(got[scored], np.stack([expected[i]["probs"] for i in scored]), atol=1e-5, rtol=0)
    assert np.isnan(np.delete(got, scored, axis=0)).all()
    flagged = table.column("flagged").to_pylist()
    assert [flagged[i] for i in scored] == [expected[i]["flagged"] for i in scored]


def test_a_second_scan_into_the_same_folder_is_refused_by_name(tiny_dir, safety_dir, tmp_path):
    corpus = write_folder(tmp_path / "c", plain_images(2))
    settings = ScanSettings(base=str(tiny_dir), safety=str(safety_dir), workers=0, batch_size=2)
    out = tmp_path / "out"
    with OutputLock(out) as running:
        with pytest.raises(ScanLockedError) as info:
            run_scan(corpus, out, settings, progress=False)
        message = str(info.value)
        assert f"pid {os.getpid()} on {running.owner['host']}, started {running.owner['started']}" in message
        assert not list(out.glob("part-*")) and not (out / "manifest.json").exists()  # refused before any write
    assert not (out / LOCK_NAME).exists()  # released by its holder
    run_scan(corpus, out, settings, progress=False)  # now free
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tiny_dir, safety_dir, tmp_path):
    corpus = write_folder(tmp_path / "c", plain_images(2))
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(gone.stdout)
    (out / LOCK_NAME).write_text(
        json.dumps({"pid": dead_pid, "host": OutputLock(out).owner["host"], "started": "2026-01-01T00:00:00Z"})
    )
    settings = ScanSettings(base=str(tiny_dir), safety=str(safety_dir), workers=0, batch_size=2)
    with pytest.warns(UserWarning, match=f"pid {dead_pid}"):
        manifest = run_scan(corpus, out, settings, progress=False)
    assert manifest["complete"] and not (out / LOCK_NAME).exists()


def test_a_lock_file_nobody_holds_is_taken_over_whatever_pid_it_names(tmp_path):
    """The file names a live pid (reused, or of another host): only the kernel lock says whether a scan runs."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": "elsewhere", "started": "then"}))
    with pytest.warns(UserWarning, match=f"pid {os.getppid()} on elsewhere"):
        with OutputLock(out):
            pass
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_a_killed_scan_is_free_at_once_even_with_its_forked_workers_alive(tmp_path):
    """A process takes the lock, forks a child that lives on (as a DataLoader worker would), and is SIGKILLed."""
    out = tmp_path / "out"
    code = (
        "import os, sys, time; from safety_modules.output_lock import OutputLock; "
        f"OutputLock({str(out)!r}).__enter__(); child = os.fork(); "
        "time.sleep(60) if child == 0 else (print(child, flush=True), time.sleep(60))"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(ScanLockedError, match=f"pid {holder.pid} on "):
            OutputLock(out).__enter__()
        holder.kill()
        holder.wait(timeout=30)
        os.kill(child, 0)  # the forked child still runs ...
        with pytest.warns(UserWarning, match=f"pid {holder.pid}"):  # ... and the lock is free
            with OutputLock(out):
                assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (out / LOCK_NAME).exists()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_auto_workers_follow_the_cores_this_process_may_use():
    code = (
        "import os; from safety_modules.scan.settings import resolve_workers; "
        "os.sched_setaffinity(0, {0}); a = resolve_workers('auto'); "
        "os.sched_setaffinity(0, set(range(os.cpu_count()))); print(a, resolve_workers('auto'), os.cpu_count())"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    one_core, all_cores, count = map(
        int,
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120
        ).stdout.split(),
    )
    assert one_core == 1 and all_cores == max(1, min(count - 1, 16))
    with pytest.raises(ValueError, match="--workers"):
        from safety_modules.scan.settings import resolve_workers

        resolve_workers("many")
