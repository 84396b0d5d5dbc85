"""Run logs: JSON-lines written as a run goes (one row per epoch / level / episode) and CSV tables.

Under torchrun only the main process writes.
"""
import csv
import json
import os


def _writer():
    return os.environ.get("RANK", "0") == "0"


def append_jsonl(path, row):
    if not _writer():
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path):
    """All complete rows of a JSON-lines file (a torn last line from a crash is skipped)."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_jsonl(path, rows):
    if not _writer():
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_csv(path, rows, columns=None):
    """Rows (dicts) to CSV atomically; columns default to the union of keys in first-seen order."""
    if not _writer():
        return path
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def write_json(path, obj):
    if not _writer():
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


class WandbLog:
    """Optional Weights & Biases mirror of the run logs (only with --wandb; imported lazily)."""

    def __init__(self, enabled, project, name, config):
        self.run = None
        if enabled:
            try:
                import wandb
            except ImportError as exc:
                from utils.errors import BridgeError

                raise BridgeError("--wandb needs the wandb package (pip install wandb)") from exc
            self.run = wandb.init(project=project, name=name, config=config)

    def log(self, row):
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})

    def finish(self):
        if self.run is not None:
            self.run.finish()
