"""The review's plots: matplotlib PNGs of the collected numbers (traffic and reward, evaluations,
forgetting, snapshot sizes, curation filters)."""

from __future__ import annotations

from pathlib import Path

PLOT_NAMES = ("traffic_reward", "evaluations", "forgetting", "snapshots", "filters")


def make_plots(data: dict, out_dir: Path) -> dict[str, str]:
    """PNG files for the sections that have data: {plot name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    for name in PLOT_NAMES:  # a rerun into the same folder must not keep plots of data now gone
        (out_dir / f"{name}.png").unlink(missing_ok=True)

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=90)
        plt.close(fig)
        plots[name] = f"{name}.png"

    weeks = data["traffic"]["weeks"]
    if weeks:
        x = [w["week"][5:] for w in weeks]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(x, [w["turns"] for w in weeks], color="#9ecae1", label="turns")
        ax.set_ylabel("turns per week")
        ax.tick_params(axis="x", rotation=60)
        ax2 = ax.twinx()
        ax2.plot(x, [w["mean_reward"] if w["mean_reward"] is not None else float("nan") for w in weeks],
                 color="#d62728", marker="o", label="mean reward")
        ax2.set_ylim(-1, 1)
        ax2.set_ylabel("mean reward")
        ax.set_title("Traffic and reward per week")
        save(fig, "traffic_reward")
    models = [v for v in data["versions"]["models"] if v["domain"] is not None or v["retention"] is not None]
    if models:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ids = [v["version_id"] for v in models]
        for concept, color in (("domain", "#1f77b4"), ("retention", "#2ca02c"), ("refusal", "#9467bd")):
            ys = [v[concept] if v[concept] is not None else float("nan") for v in models]
            if any(y == y for y in ys):
                ax.plot(ids, ys, marker="o", color=color, label=concept)
        ax.set_title("Evaluations per model version")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "evaluations")
    retained = [v for v in data["versions"]["models"] if v["retention"] is not None and v["kind"] != "base"]
    if retained:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([v["version_id"] for v in retained], [1 - v["retention"] for v in retained], marker="o",
                color="#ff7f0e", label="forgetting = 1 - retention")
        ax.axhline(1 - data["gates"]["min_retention"], color="grey", linestyle="--", label="gate (1 - min_retention)")
        ax.set_title("Forgetting over time")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "forgetting")
    snaps = data["data"]["snapshots"]
    if snaps:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        bottom = [0] * len(snaps)
        labels = [s["snapshot_id"][:11] for s in snaps]
        for table in ("sft_train", "sft_eval", "dpo_train", "dpo_eval"):
            vals = [int(s["counts"].get(table, 0)) for s in snaps]
            ax.bar(labels, vals, bottom=bottom, label=table)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title("Dataset snapshots (rows)")
        ax.legend()
        save(fig, "snapshots")
    removals = data["data"]["removals"][:12]
    if removals:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(removals) + 1.2))
        ax.barh([r["filter"] for r in reversed(removals)], [r["removed"] for r in reversed(removals)], color="#8c564b")
        ax.set_title("Removed by each curation filter")
        save(fig, "filters")
    return plots
