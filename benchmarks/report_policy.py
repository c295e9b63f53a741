"""Section 2 of docs/BENCHMARKS.md: policy overhead per engine step (table, figure, targets)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report_format import NA, fmt, section_error, status
from report.tables import record_table


def _fig_overhead(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "us_per_step" in r]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for pol in sorted({r["policy"] for r in rows}):
        rs = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["waiting"])
        ax.loglog(
            [r["waiting"] for r in rs], [max(r["us_per_step"], 0.1) for r in rs], "o-", label=pol
        )
    ax.loglog([1_000], [100], "rv", ms=9, label="target (1k: 100 us)")
    ax.loglog([10_000], [1_000], "r^", ms=9, label="target (10k: 1 ms)")
    ax.set_xlabel("waiting requests (256 running)")
    ax.set_ylabel("policy CPU us per engine step")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def policy_section(sec: dict | None, figs: Path, targets: list) -> list[str]:
    out = ["## 2. Policy overhead per engine step", ""]
    err = section_error(sec, "policy")
    if err:
        targets.append(("Policy: <= 100 us/step at 1,000 waiting (every policy)", "n/a", None))
        targets.append(("Policy: <= 1 ms/step at 10,000 waiting (every policy)", "n/a", None))
        return [*out, err, ""]
    rows = sec["rows"]
    out += [
        f"Every `conf/policy/*.yaml`, {sec.get('running', 256)} running requests (each generating",
        "a token per step) and 100 / 1,000 / 10,000 waiting, the hooks called exactly as",
        "`SimEngine.run` calls them (see `benchmarks/bench_policy.py`). `CPU us/step` is the median",
        "over 5 blocks of 64 steps of the mean CPU time per step (it includes the periodic",
        "re-prediction batches of `drift`, amortised); `p99` is single steps. One process per",
        "policy.",
        "",
        record_table(
            [
                {
                    "policy": r["policy"],
                    "waiting": r.get("waiting", NA),
                    "CPU us/step": r.get("us_per_step", NA),
                    "block min-max": f"{fmt(r.get('us_block_min', NA))}-{fmt(r.get('us_block_max', NA))}"
                    if "us_block_min" in r
                    else r.get("error", "")[:80],
                    "wall us/step": r.get("wall_us_per_step", NA),
                    "p99 CPU us": r.get("us_p99_step", NA),
                    "target us": r.get("target_us", NA),
                    "target": status(r.get("ok")),
                }
                for r in rows
            ]
        ),
    ]
    if _fig_overhead(rows, figs / "policy_overhead.png"):
        out += ["", "![policy overhead](figures/policy_overhead.png)"]
    for w, t in ((1_000, 100), (10_000, 1_000)):
        rs = [r for r in rows if r.get("waiting") == w]
        if rs:
            bad = [f"`{r['policy']}` {r['us_per_step']:.0f} us" for r in rs if not r["ok"]]
            worst = max(rs, key=lambda r: r["us_per_step"])
            targets.append(
                (
                    f"Policy: <= {t:,} us/step at {w:,} waiting (every policy)",
                    "missed by " + ", ".join(bad)
                    if bad
                    else f"all met; worst `{worst['policy']}` {worst['us_per_step']:.0f} us",
                    not bad,
                )
            )
    return [*out, ""]
