"""The tables and target lines of the third-round section of reports/lambda.md, rendered from the JSON
reports in this folder (written by `sdnet lambda-rules` and `sdnet lambda-hold-out`): no number typed by hand.

    python reports/lambda/round3/render.py reports/lambda/round3
"""

import json
import sys
from pathlib import Path

import pandas as pd

src = Path(sys.argv[1])
rules = json.loads((src / "lambda-rules-noise.json").read_text())
hold = json.loads((src / "holdout-shipped.json").read_text())
all19 = json.loads((src / "lambda-rules-all19.json").read_text())


def table(rows, cols):
    return pd.DataFrame(rows)[cols].to_markdown(index=False, floatfmt="g")


out = []
# per corruption mean over severities, per method
rows = rules["rows"]
methods = [s["lam"] for s in rules["meta"]["summary"]]
noise = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
per = []
for m in methods:
    r = {"method": m}
    for c in noise:
        vals = [
            x["accuracy"]
            for x in rows
            if x["lam"] == m and x["corruption"] == c and x["severity"] != "mean" and x["severity"] != 0
        ]
        r[c] = round(sum(vals) / len(vals), 2) if vals else None
    s = next(s for s in rules["meta"]["summary"] if s["lam"] == m)
    r["gain, 20 noise cells"] = s["gain"]
    r["clean"] = s["clean"]
    r["uses labels"] = s["uses_labels"]
    r["lam_mean"] = s["lam_mean"]
    per.append(r)
out.append(table(per, ["method", *noise, "gain, 20 noise cells", "clean", "uses labels", "lam_mean"]))
summary = {s["lam"]: s for s in rules["meta"]["summary"]}
auto = next(k for k in summary if str(k).startswith("auto"))
oracle = summary["oracle:per-cell"]["gain"]
imp = {m: None for m in methods}
for m in methods:
    vals = [
        x["accuracy"]
        for x in rows
        if x["lam"] == m and x["corruption"] == "impulse_noise" and x["severity"] not in (0, "mean")
    ]
    imp[m] = sum(vals) / len(vals)
targets = [
    f"- `{auto}` gains {summary[auto]['gain']:+.2f} points over lambda 0.1 on the 20 noise cells, "
    f"{summary[auto]['gain'] / oracle:.0%} of the per-cell oracle's {oracle:+.2f} (target 100%: "
    f"{'met' if summary[auto]['gain'] >= oracle else 'not met'}).",
    f"- Impulse noise: {imp[auto] - imp[0.1]:+.2f} vs the per-cell oracle's {imp['oracle:per-cell'] - imp[0.1]:+.2f} "
    f"(target: at least the oracle's gain: {'met' if imp[auto] - imp[0.1] >= imp['oracle:per-cell'] - imp[0.1] else 'not met'}).",
    f"- Clean: {summary[auto]['clean_change']:+.2f} points (target: drop <= 0.2: {'met' if summary[auto]['clean_change'] >= -0.2 else 'not met'}).",
    f"- Per-input oracle: {summary['oracle:per-input']['gain']:+.2f}, the headroom left for per-input rules.",
]
out.append("\n".join(targets))
# all 19 corruptions: mean over severities, 0.1 vs auto
r19 = all19["rows"]
corrs = sorted(
    {x["corruption"] for x in r19 if x["severity"] not in (0, "mean") and x["corruption"] not in ("clean", "mean")}
)
auto19 = next(s["lam"] for s in all19["meta"]["summary"] if str(s["lam"]).startswith("auto"))
lines = []
for c in corrs:

    def mean(m, c=c):
        v = [x["accuracy"] for x in r19 if x["lam"] == m and x["corruption"] == c and x["severity"] not in (0, "mean")]
        return sum(v) / len(v)

    lines.append(
        {
            "corruption": c,
            "lambda 0.1": round(mean(0.1), 2),
            auto19: round(mean(auto19), 2),
            "change": round(mean(auto19) - mean(0.1), 2),
        }
    )
out.append(table(lines, ["corruption", "lambda 0.1", auto19, "change"]))
worst = min(lines, key=lambda r: r["change"])
out.append(
    f"- Largest drop of a corruption's mean over severities: {worst['change']:+.2f} ({worst['corruption']}); "
    f"target <= 0.3: {'met' if worst['change'] >= -0.3 else 'not met'}. "
    f"Corruptions that move by 0.3 or more either way: "
    + (", ".join(f"{r['corruption']} {r['change']:+.2f}" for r in lines if abs(r["change"]) >= 0.3) or "none")
    + "."
)
hs = hold["meta"]["summary"]
out.append(
    table(hs, ["held_out", "reference_accuracy", "gain_in_calibration", "gain_held_out", "kept", "lam_mean_held_out"])
)
noise_kept = [h for h in hs if h["held_out"] in noise]
other = [h for h in hs if h["held_out"] not in noise]
out.append(
    f"- Held-out noises keep {min(h['kept'] for h in noise_kept if h['kept'] is not None):.0%} or more of their "
    f"in-calibration gain (target >= 80%: {'met' if all((h['kept'] or 0) >= 0.8 for h in noise_kept) else 'not met'}); "
    f"held-out non-noise corruptions change by {min(h['gain_held_out'] for h in other):+.2f} at worst "
    f"(target: no drop > 0.3: {'met' if min(h['gain_held_out'] for h in other) >= -0.3 else 'not met'})."
)
print("\n\n".join(out))
