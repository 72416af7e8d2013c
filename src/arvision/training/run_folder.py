"""A training run's folder: what it holds, and the settings it was started with (``run.json``).

A resumed run is bit-identical to an uninterrupted one only if nothing that shapes the trajectory changed: the
training config, the data, the tokenizer, the model, the seed, the precision, the device type.  The commands store
those settings in ``run.json`` when a run starts, and on ``--resume`` compare them with the new ones
(``check_run_folder``): any difference is refused with one line naming each changed setting, unless the caller
allows it (then it is a warning: the run goes on, but no longer matches an uninterrupted one).  A folder that
already holds a run is not started over unless asked (``--overwrite``); it is never silently appended to.

Checking (``check_run_folder``) only reads, so the commands call it before any expensive work; the folder is
written (``start_run_folder``) only once the data is ready.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from arvision.errors import ArvisionError
from arvision.training.checkpoint import list_checkpoints, resumable_checkpoint

RUN_FILE = "run.json"
# settings that do not shape the trajectory: they may change between an interrupted run and its resumption
FREE_FIELDS = frozenset({"log_every", "sample_every", "ckpt_every", "keep_last", "num_samples", "--ckpt-every",
                         "--sample-every"})
# what a run writes besides its final outputs; --overwrite removes these and the outputs
RUN_FILES = ("checkpoints", "samples", "tensorboard", "log.jsonl", RUN_FILE)


def flatten(settings: dict, prefix: str = "") -> dict:
    """Nested dicts -> one level with dotted keys; values as JSON would give them back (tuples -> lists)."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return flat


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "unset" if value is None else str(value)


def changed_settings(stored: dict, new: dict, free=FREE_FIELDS) -> list[str]:
    """``NAME NEW (run: OLD)`` for every setting of ``new`` that differs from ``stored`` (both flattened), free
    fields excepted."""
    old, cur = flatten(stored), flatten(new)
    keys = sorted(k for k in set(old) | set(cur) if k not in free and old.get(k, None) != cur.get(k, None))
    return [f"{k} {_show(cur.get(k))} (run: {_show(old.get(k))})" for k in keys]


def warn_changed_config(checkpoint: Path, saved: dict, config) -> None:
    """The trainers' own check on resume (library use, without ``run.json``): warn when the training config (a
    dataclass) differs from the one ``checkpoint`` was written with."""
    import dataclasses

    if (Path(checkpoint).parent.parent / RUN_FILE).is_file():
        return  # a command's run: it compared every setting already (check_run_folder), and said so
    diff = changed_settings(saved, dataclasses.asdict(config))
    if diff:
        warnings.warn(f"resuming {checkpoint} with changed settings ({'; '.join(diff)}): the run will not match an "
                      "uninterrupted one", stacklevel=3)


def check_out_path(out: str | Path) -> Path:
    """``--out`` must be a folder (existing or not), not a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArvisionError(f"--out {out} is an existing file, not a folder: give a folder for the run")
    return out


def run_state(out: Path, outputs: tuple[str, ...]) -> str | None:
    """What of a run ``out`` holds, in words ("finished", "started: checkpoint at step 40"...), or None if no run."""
    if not out.is_dir():
        return None
    if all((out / name).exists() for name in outputs):
        return "finished"
    ckpts = list_checkpoints(out / "checkpoints")
    if ckpts:
        return f"started: {len(ckpts)} checkpoint(s), the newest {ckpts[-1].name}"
    if (out / "log.jsonl").exists():
        return "started: a log.jsonl but no checkpoint yet"
    return None


def read_run_settings(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArvisionError(f"{Path(out) / RUN_FILE} is not valid JSON; restore it, or start over with --overwrite") \
            from None


def check_run_folder(out: str | Path, settings: dict, *, outputs: tuple[str, ...], resume: bool,
                     overwrite: bool = False, allow_changed: bool = False) -> None:
    """Refuse, before any work, what would break a run's promises (read-only; see the module docstring).

    settings: this invocation's settings (``{"command": ..., "--lr": ...}``); outputs: the files a finished run
    leaves (all present = finished)."""
    out = check_out_path(out)
    if resume and overwrite:
        raise ArvisionError("--resume continues the run in --out and --overwrite starts it again: give one of them")
    state = run_state(out, outputs)
    if not resume:
        if state is not None and not overwrite:
            raise ArvisionError(f"{out} already holds a training run ({state}); continue it with --resume, choose "
                                "another --out, or start it again with --overwrite")
        return
    stored = read_run_settings(out)
    if stored is None:
        if state is not None:
            warnings.warn(f"{out} has no {RUN_FILE} (a run of an older arvision?): its settings cannot be compared "
                          "with these; make sure they are the same", stacklevel=2)
    else:
        if stored.get("command") != settings.get("command"):
            raise ArvisionError(f"--resume: {out} holds an `arvision {stored.get('command')}` run, not an "
                                f"`arvision {settings.get('command')}` one")
        diff = changed_settings(stored, settings)
        if diff and not allow_changed:
            raise ArvisionError(f"--resume: settings differ from the run in {out}: {'; '.join(diff)}; resuming "
                                "with them would not reproduce an uninterrupted run: use the run's settings, or "
                                "pass --allow-changed-settings to go on anyway")
        if diff:
            warnings.warn(f"resuming with changed settings ({'; '.join(diff)}): the run will no longer be "
                          "bit-identical to an uninterrupted one", stacklevel=2)
    resumable_checkpoint(out / "checkpoints")  # every checkpoint corrupt: an error now, not a restart from 0


def start_run_folder(out: str | Path, settings: dict, *, outputs: tuple[str, ...], overwrite: bool = False,
                     resume: bool = False) -> Path:
    """Create ``out`` and record ``settings`` in it (after ``check_run_folder``); with ``overwrite``, first remove
    the previous run's files (checkpoints, samples, logs, outputs; caches such as the token cache stay).

    A resumed run keeps the settings it was started with (changed ones, allowed, are not recorded: the next
    resume compares with the original again, and a resume that then fails leaves the record as it was)."""
    out = Path(out)
    if resume and (out / RUN_FILE).is_file():
        return out
    if overwrite and out.is_dir():
        for name in RUN_FILES + tuple(outputs):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, out / RUN_FILE)
    return out
