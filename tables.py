"""eval.py's results files and tables: DIR/samples*.jsonl rows (one per example and setting) read
back and laid out as in Table 2.

A setting is a dict (model name and path, task, data, remasking, schedule, EOSER, block size, steps,
gen length, temperature, top-p); a row is {"settings", "index", "completion", "reward",
"correct"} (+ "step_rewards").
"""
import json
from pathlib import Path

REMASKING_NAMES = {"lcr": "LCR (Eq. 9, LLaDA)",
                   "rcr": "RCR, running max (Eq. 10, the paper's text)",
                   "rcr-latest": "RCR, latest confidence (the authors' code; Table 2's RCR)",
                   "random": "random (Eq. 8)"}


def read_rows(out_dir):
    """Every row of DIR/samples*.jsonl keyed by (settings, index); a later row replaces an earlier
    one."""
    rows = {}
    for path in sorted(Path(out_dir).glob("samples*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # the half-written last line of a crashed run: score it again
                print(f"{path.name}:{n}: unreadable row skipped")
                continue
            rows[(json.dumps(row["settings"], sort_keys=True), row["index"])] = row
    return rows


def row_name(s):
    """Table 2's row: model / remasking (/ schedule when not linear) (/ EOSER gamma_min when on)."""
    schedule = f' / {s["schedule"]}' if s.get("schedule", "linear") != "linear" else ""
    eoser = f' / EOSER {s["eoser"]:g}' if s.get("eoser") is not None else ""
    return f'{s["name"]} / {s["remasking"]}{schedule}{eoser}'


def label(s):
    """How a setting is named in the reports."""
    return f'{row_name(s)} / B={s["block_length"]} T={s["steps"]}'


def caption(settings, n, extra=""):
    """What a table measures: metric, problems, decoding settings, model paths."""
    s = settings[0]
    models = ", ".join(sorted({f'{x["name"]} = {x["model"]}' for x in settings}))
    used = sorted({x["remasking"] for x in settings}, key=list(REMASKING_NAMES).index)
    return (f'{s["task"]} ({s["data"]}), {n} problems per cell; gen length {s["gen_length"]}, '
            f'temperature {s["temperature"]}, top-p {s["top_p"]}; models: {models}.{extra}\n\n'
            + "".join(f"- {m}: {REMASKING_NAMES[m]}\n" for m in used))


def accuracy_table(rows, settings, extra=""):
    """Markdown shaped like Table 2: rows model / remasking, columns block size x steps,
    accuracy in %."""
    cells = {}  # (row name, (B, T)) -> correct flags
    wanted = {json.dumps(s, sort_keys=True) for s in settings}
    for r in rows:
        if json.dumps(r["settings"], sort_keys=True) in wanted:
            s = r["settings"]
            cells.setdefault(
                (row_name(s), (s["block_length"], s["steps"])), []).append(r["correct"])
    names, cols = list(dict.fromkeys(row_name(s) for s in settings)), sorted({k[1] for k in cells})
    n = "/".join(str(k) for k in sorted({len(v) for v in cells.values()}))

    def acc(v):
        return f"{100 * sum(v) / len(v):.1f}" if v else "-"
    lines = [f"Accuracy (%): {caption(settings, n, extra)}",
             "| Model / remasking | " + " | ".join(f"B={b} T={t}" for b, t in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(acc(cells.get((name, c), [])) for c in cols) + " |"
              for name in names]
    return "\n".join(lines) + "\n"
