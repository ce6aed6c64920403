"""benchmarks/zoo.py --merge: cells measured later replace the same cells, the rest keep their invocation."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import zoo


def _row(model: str, op: str, ratio: float, **extra: object) -> dict:
    return {"model": model, "op": op, "ran": True, "ratio": ratio, "seconds": 1.0, "peak_rss_mb": 700.0,
            "shape_kept": True, "params_before": 1000, "share": 0.99, **extra}


def test_merge_replaces_measured_cells_and_keeps_the_others(tmp_path: Path) -> None:
    out = tmp_path / "zoo.json"
    first_meta = {"command": "python benchmarks/zoo.py --budget-s 10", "python": "3.11", "torch": "2", "cpu_count": 2,
                  "load_average": [1.0, 1.0, 1.0], "wall_s": 10.0}
    timeout = {"model": "alexnet", "op": "tucker", "ran": False, "error": "timeout after 130 s", "seconds": 130.0}
    zoo.write(out, [_row("alexnet", "svd", 4.0), timeout, _row("resnet18", "svd", 4.0)], zoo.OPS, first_meta)
    earlier = zoo.load_earlier(out)
    assert [row["invocation"] for row in earlier["rows"]] == [0, 0, 0]

    second_meta = dict(first_meta, command="python benchmarks/zoo.py --models alexnet --merge", wall_s=5.0)
    now = [_row("alexnet", "tucker", 4.0, seconds=60.0),
           {"model": "alexnet", "op": "cp", "ran": False, "not_run": True, "error": "not run"}]
    zoo.write_merged(out, earlier, now, second_meta)
    data = json.loads(out.read_text())
    cells = {(row["model"], row["op"]): row for row in data["rows"]}
    assert cells[("alexnet", "tucker")]["ran"] and cells[("alexnet", "tucker")]["invocation"] == 1
    assert cells[("alexnet", "svd")]["invocation"] == 0 and cells[("resnet18", "svd")]["invocation"] == 0
    assert cells[("alexnet", "cp")].get("not_run")  # nothing measured before: the budget note is kept
    assert [inv["command"] for inv in data["meta"]["invocations"]] == [first_meta["command"], second_meta["command"]]
    assert data["misses"] == [] or all("alexnet/tucker" not in line for line in data["misses"])
    # rows follow the benchmark's model and op order, and the table marks each cell with its invocation
    order = [(row["model"], row["op"]) for row in data["rows"]]
    assert order.index(("resnet18", "svd")) < order.index(("alexnet", "svd")) < order.index(("alexnet", "tucker"))
    table = out.with_suffix(".md").read_text()
    assert "4.00x 60s 0.7G [1]" in table and "4.00x 1s 0.7G [0]" in table

    # a third merge reads the invocations back and keeps counting
    zoo.write_merged(out, zoo.load_earlier(out), [_row("resnet18", "svd", 4.1)], dict(second_meta, wall_s=1.0))
    data = json.loads(out.read_text())
    assert len(data["meta"]["invocations"]) == 3
    assert {(r["model"], r["op"]): r["invocation"] for r in data["rows"]}[("resnet18", "svd")] == 2
