"""Summaries of the accuracy benchmark's runs and its markdown report."""

from __future__ import annotations

import math
from collections import defaultdict

from .configurations import CANDIDATES, DEFAULT_CANDIDATES, DIFFUSERS_DEFAULT, MODEL_DTYPES, ROUNDS_STATE

# ---------------------------------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------------------------------


def is_ok(r: dict) -> bool:
    e = r.get("error")
    return e is not None and math.isfinite(e)


def _cells(result: dict):
    return [(p["problem"], p["schedule"]) for p in result["problems"]]


def fixed(runs: list[dict]) -> list[dict]:
    """The runs on fixed (named) grids: everything but the calibrated runs."""
    return [r for r in runs if r["grid"] != "calibrated"]


def best_runs(runs: list[dict], library: str) -> dict:
    """``(problem, schedule, output, nfe) -> best eligible run`` of a library (smallest RMS error)."""
    best: dict = {}
    for r in runs:
        if r["library"] != library or not r["eligible"] or not is_ok(r):
            continue
        k = (r["problem"], r["schedule"], r["output"], r["nfe_budget"])
        if k not in best or r["error"] < best[k]["error"]:
            best[k] = r
    return best


def _geo(xs) -> float:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan


def short(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {
        k: r.get(k)
        for k in ("config", "grid", "error", "error_median", "nfe", "steps", "t_start", "state_dtype", "default_dtype")
        if k in r
    }


def _regrets(runs: list[dict], output: str, metric: str = "error") -> dict:
    """``(config, grid) -> {(problem, schedule, output, nfe): metric / best metric of ours in that cell}``."""
    best: dict = {}
    for r in runs:
        if r["library"] == "ours" and r["output"] == output and is_ok(r):
            k = (r["problem"], r["schedule"], output, r["nfe_budget"])
            best[k] = min(best.get(k, math.inf), r[metric])
    ratios: dict = defaultdict(dict)
    for r in runs:
        k = (r["problem"], r["schedule"], output, r["nfe_budget"])
        if r["library"] == "ours" and r["output"] == output and k in best:
            ratios[(r["config"], r["grid"])][k] = r[metric] / best[k] if is_ok(r) else math.inf
    return ratios


def _regret(v: dict, need: set) -> tuple[float, float] | None:
    """Geometric mean and maximum of the ratios over the cells ``need`` (``None`` if one is missing)."""
    if not need <= set(v):
        return None
    xs = [v[k] for k in need]
    return (_geo(xs) if all(math.isfinite(x) for x in xs) else math.inf), max(xs)


def rank_ours(runs: list[dict], cells, output: str, nfes, metric: str = "error") -> list[dict]:
    """Our (config, grid) pairs ranked by the geometric mean over ``cells x nfes`` of ``metric / best metric of ours
    in that cell`` (1 = best everywhere; ``metric`` is ``"error"`` (RMS) or ``"error_median"``); a pair missing a
    cell is not ranked."""
    need = {(p, s, output, n) for p, s in cells for n in nfes}
    rows = []
    for (c, g), v in _regrets(runs, output, metric).items():
        reg = _regret(v, need)
        if reg is not None:
            rows.append({"config": c, "grid": g, "regret": reg[0], "worst": reg[1]})
    return sorted(rows, key=lambda r: (r["regret"], r["worst"]))


def candidate_table(runs: list[dict], cells, nfes, output: str = "state", grids=("logsnr", "karras")) -> list[dict]:
    """For each candidate and grid: the RMS and median regrets (see :func:`rank_ours`) at each NFE separately."""
    reg = {m: _regrets(runs, output, m) for m in ("error", "error_median")}
    rows = []
    for c in CANDIDATES:
        for g in grids:
            row = {"config": c, "grid": g}
            for n in nfes:
                need = {(p, s, output, n) for p, s in cells}
                for m, key in (("error", "rms"), ("error_median", "median")):
                    got = _regret(reg[m].get((c, g), {}), need)
                    row[f"{key}_{n}"] = None if got is None else got[0]
            if any(v is not None for k, v in row.items() if k not in ("config", "grid")):
                rows.append(row)
    return rows


def lof_effect(runs: list[dict], grids=None) -> list[dict]:
    """Geometric mean of ``error(lower_order_final=true) / error(... = false)`` per family and NFE (same grid,
    problem, schedule, output; only ``grids`` if given)."""
    by = {}
    for r in runs:
        if (
            r["library"] == "ours"
            and is_ok(r)
            and "lower_order_final=" in r["config"]
            and (grids is None or r["grid"] in grids)
        ):
            by[(r["config"], r["grid"], r["problem"], r["schedule"], r["output"], r["nfe_budget"])] = r["error"]
    acc: dict = defaultdict(list)
    for (c, g, p, s, o, n), e in by.items():
        if "lower_order_final=true" in c:
            other = by.get((c.replace("lower_order_final=true", "lower_order_final=false"), g, p, s, o, n))
            if other:
                acc[(c.split(":")[0] + ":" + c.split(":")[1].split(",")[0], n)].append(e / other)
    return [
        {"family": f, "nfe": n, "ratio_true_over_false": _geo(v), "cases": len(v)} for (f, n), v in sorted(acc.items())
    ]


def grid_wins(runs: list[dict]) -> list[dict]:
    """For each schedule and NFE: how often each grid is the best grid of a configuration (state output)."""
    best: dict = {}
    for r in runs:
        if r["library"] == "ours" and r["output"] == "state" and is_ok(r):
            k = (r["config"], r["problem"], r["schedule"], r["nfe_budget"])
            if k not in best or r["error"] < best[k][1]:
                best[k] = (r["grid"], r["error"])
    count: dict = defaultdict(lambda: defaultdict(int))
    for (_, _, s, n), (g, _) in best.items():
        count[(s, n)][g] += 1
    return [
        {"schedule": s, "nfe": n, "wins": dict(sorted(c.items(), key=lambda kv: -kv[1]))}
        for (s, n), c in sorted(count.items())
    ]


def lookup(runs: list[dict], library: str, config: str, grid: str) -> dict:
    return {
        (r["problem"], r["schedule"], r["output"], r["nfe_budget"]): r
        for r in runs
        if r["library"] == library and r["config"] == config and r["grid"] == grid
    }


def failures(runs: list[dict]) -> list[dict]:
    """Failed (non-finite or raising) runs grouped by library, family, grid and final-step option."""
    count: dict = defaultdict(lambda: [0, set(), ""])
    for r in runs:
        if r.get("failed"):
            final = next((f for f in ("final_sigmas_type=zero", "final_sigmas_type=sigma_min") if f in r["config"]), "")
            c = count[(r["library"], r["family"], r["grid"], final)]
            c[0] += 1
            c[1].add(r["nfe_budget"])
            c[2] = r["failed"][:80]
    return [
        {
            "library": k[0],
            "family": k[1],
            "grid": k[2],
            "final": k[3],
            "runs": v[0],
            "nfe": sorted(v[1]),
            "reason": v[2],
        }
        for k, v in sorted(count.items())
    ]


def _peer(*bests: dict | None) -> dict | None:
    """The best of the peers' best runs (smallest RMS error), with its library."""
    got = [b for b in bests if b is not None]
    return min(got, key=lambda r: r["error"]) if got else None


def calibrated_runs(runs: list[dict]) -> dict:
    """``(problem, schedule, output, nfe) -> the calibrated run``."""
    return {
        (r["problem"], r["schedule"], r["output"], r["nfe_budget"]): r
        for r in runs
        if r["library"] == "ours" and r["grid"] == "calibrated" and is_ok(r)
    }


def summarise(result: dict) -> dict:
    runs, settings = result["runs"], result["settings"]
    fixed_runs = fixed(runs)
    ours = best_runs(fixed_runs, "ours")
    theirs, kd = best_runs(runs, "diffusers"), best_runs(runs, "k-diffusion")
    cal = calibrated_runs(runs)
    cells = _cells(result)
    ranking = {
        out: {
            "target_nfe": rank_ours(fixed_runs, cells, out, settings["target_nfe"])[:15],
            "target_nfe_median": rank_ours(fixed_runs, cells, out, settings["target_nfe"], "error_median")[:8],
            **{f"nfe_{n}": rank_ours(fixed_runs, cells, out, (n,))[:5] for n in settings["nfe"]},
        }
        for out in ("state", "x0")
    }
    default_nfe = [n for n in (10, 20) if n in settings["nfe"]]
    bare = [r for r in fixed_runs if r["grid"] == "logsnr" and r["config"] in DEFAULT_CANDIDATES]
    recommended = rank_ours(bare, cells, "state", default_nfe) if default_nfe else []
    top = ranking["state"]["target_nfe"][0] if ranking["state"]["target_nfe"] else None
    top_runs = lookup(runs, "ours", top["config"], top["grid"]) if top else {}
    dd_runs = lookup(runs, "diffusers", DIFFUSERS_DEFAULT.label, DIFFUSERS_DEFAULT.grid)
    current = settings["default"]
    cur_runs = lookup(runs, "ours", current[0], current[1])
    proposed = recommended[0]["config"] if recommended else current[0]
    def_runs = lookup(runs, "ours", proposed, "logsnr")
    head = []
    for p, s in cells:
        for output in ("state", "x0"):
            for n in settings["nfe"]:
                k = (p, s, output, n)
                o, d, t, dd = ours.get(k), theirs.get(k), top_runs.get(k), dd_runs.get(k)
                peer = _peer(d, kd.get(k))
                c, df, cur = cal.get(k), def_runs.get(k), cur_runs.get(k)
                df = df if df and is_ok(df) else None
                ratio = o["error"] / d["error"] if o and d else None
                target = n in settings["target_nfe"]
                ratio_cal = c["error"] / peer["error"] if c and peer else None
                ratio_def = df["error"] / peer["error"] if df and peer else None
                head.append(
                    {
                        "problem": p,
                        "schedule": s,
                        "output": output,
                        "nfe": n,
                        "ours": short(o),
                        "diffusers": short(d),
                        "k-diffusion": short(kd.get(k)),
                        "peer": {**short(peer), "library": peer["library"]} if peer else None,
                        "calibrated": {
                            **short(c),
                            "calibrated_grid": c["calibrated_grid"],
                            "analytic_first_step": bool(c.get("calibration_analytic_first_step")),
                        }
                        if c
                        else None,
                        "default": short(df),
                        "current_default": short(cur) if cur and is_ok(cur) else None,
                        "ratio": ratio,
                        "ratio_calibrated": ratio_cal,
                        "ratio_default": ratio_def,
                        "ratio_best_fixed_to_peer": o["error"] / peer["error"] if o and peer else None,
                        "target_met": (ratio <= 0.5) if ratio is not None and target else None,
                        "target_met_calibrated": (ratio_cal <= 0.5) if ratio_cal is not None and target else None,
                        "target_met_default": (ratio_def <= 1.0) if ratio_def is not None and target else None,
                        "top_ranked": short(t) if t and is_ok(t) else None,
                        "top_ranked_ratio": t["error"] / d["error"] if t and is_ok(t) and d else None,
                        "diffusers_default": (
                            {**short(dd), "t_end": dd["t_end"], "error_vs_t_min": dd.get("error_vs_t_min")}
                            if dd and is_ok(dd)
                            else None
                        ),
                    }
                )
    target = [h for h in head if h["target_met"] is not None]
    target_cal = [h for h in head if h["target_met_calibrated"] is not None]
    target_def = [h for h in head if h["target_met_default"] is not None]
    return {
        "headline": head,
        "target": {
            "criterion": "best of ours <= 0.5 x best of diffusers at NFE in target_nfe, per problem, "
            "schedule and output",
            "cells": len(target),
            "met": sum(bool(h["target_met"]) for h in target),
            "criterion_calibrated": "calibrated <= 0.5 x best peer (diffusers or k-diffusion), default <= 1 x best "
            "peer, at NFE in target_nfe",
            "cells_calibrated": len(target_cal),
            "met_calibrated": sum(bool(h["target_met_calibrated"]) for h in target_cal),
            "cells_default": len(target_def),
            "met_default": sum(bool(h["target_met_default"]) for h in target_def),
        },
        "ranking": ranking,
        "recommended_default": recommended,
        "default": {"current": list(current), "proposed": [proposed, "logsnr"]},
        "candidates": candidate_table(fixed_runs, cells, settings["nfe"]),
        "top_ranked": top,
        "lower_order_final": lof_effect(fixed_runs),
        "lower_order_final_logsnr": lof_effect(fixed_runs, ("logsnr",)),
        "grid_wins": grid_wins(fixed_runs),
        "failures": failures(runs),
    }


# ---------------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------------


def _e(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2e}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cfg(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"`{r['config']}` @ {r['grid']}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


_MET = {True: "met", False: "**not met**", None: ""}


def _md_target(result: dict) -> list[str]:
    s, summ = result["settings"], result["summary"]
    t = summ["target"]
    lines = [
        "## Calibrated vs default vs best peer",
        "",
        "RMS error on the evaluation batch (seed "
        f"{s['seed']}); calibrated = `sde_diffusion.calibrate` on start states of seed {s['cal_seed']} (its pilot "
        f"and held-out halves, {s['cal_batch']} in all; budget {s['cal_budget_s']:g} s each), then run on the "
        f"evaluation batch; default = the proposed default of `sample()` (`{summ['default']['proposed'][0]}` @ "
        f"{summ['default']['proposed'][1]}, see 'Default solver'; the current one, `{s['default'][0]}` @ "
        f"{s['default'][1]}, in the last column); best peer = "
        "the best eligible run of diffusers and k-diffusion. Targets at NFE "
        + ", ".join(map(str, s["target_nfe"]))
        + f": calibrated <= 0.5 x best peer (met in **{t['met_calibrated']} of {t['cells_calibrated']}** cells), "
        f"default <= 1 x best peer (met in **{t['met_default']} of {t['cells_default']}**).",
        "",
    ]
    rows = [
        [
            h["problem"],
            h["schedule"],
            h["output"],
            h["nfe"],
            _e(h["calibrated"] and h["calibrated"]["error"]),
            f"`{h['calibrated']['config']}` @ {h['calibrated']['calibrated_grid']}"
            + (" + analytic first step" if h["calibrated"].get("analytic_first_step") else "")
            if h["calibrated"]
            else "-",
            _e(h["default"] and h["default"]["error"]),
            f"{_e(h['peer'] and h['peer']['error'])} ({h['peer']['library']}: `{h['peer']['config']}` @ "
            f"{h['peer']['grid']})"
            if h["peer"]
            else "-",
            _ratio(h["ratio_calibrated"]),
            _MET[h["target_met_calibrated"]],
            _ratio(h["ratio_default"]),
            _MET[h["target_met_default"]],
            _ratio(h["ratio_best_fixed_to_peer"]),
            _e(h["current_default"] and h["current_default"]["error"]),
        ]
        for h in summ["headline"]
        if h["nfe"] in s["target_nfe"]
    ]
    return lines + _table(
        [
            "problem",
            "schedule",
            "output",
            "NFE",
            "calibrated",
            "calibrated configuration",
            "default",
            "best peer",
            "calibrated / peer",
            "target 0.5",
            "default / peer",
            "target 1",
            "best fixed of ours / peer",
            "current default",
        ],
        rows,
    )


def _md_default(result: dict) -> list[str]:
    rows = result["summary"]["recommended_default"]
    if not rows:
        return []
    lines = [
        "",
        "## Default solver",
        "",
        "The registry names with their default options (what `sample()`'s `solver=` default can name) on the "
        "default grid (`logsnr`), ranked by regret (geometric mean over problems x schedules of error / best "
        "error among them, state output, NFE 10 and 20): the first is the proposed default of `sample()`.",
        "",
    ]
    return lines + _table(
        ["rank", "configuration", "regret", "worst"],
        [[i + 1, f"`{r['config']}`", f"{r['regret']:.2f}", f"{r['worst']:.1f}"] for i, r in enumerate(rows)],
    )


def _md_head(result: dict) -> list[str]:
    s, summ = result["settings"], result["summary"]
    top = summ["top_ranked"]
    lines = [
        "",
        "## Best of ours vs best of diffusers",
        "",
        "RMS error at the common end time (`state`: the state at `t_min`; `x0`: the data prediction at `t_min`), "
        "median over the batch in parentheses; ours = our best on a fixed grid; ratio = ours / diffusers, "
        "target <= 0.5 at NFE "
        + ", ".join(map(str, s["target_nfe"]))
        + "."
        + (
            f" Top-ranked = our top-ranked configuration (`{top['config']}` @ {top['grid']}, see the ranking), "
            "its error and its ratio to diffusers' best."
            if top
            else ""
        )
        + f" diffusers default = `{DIFFUSERS_DEFAULT.label}`: its last evaluation (time in parentheses) is "
        "above t_min, so it is not eligible; shown is the distance of its output to the x0 target (the exact "
        "denoised state at t_min).",
        "",
    ]
    rows = []
    for h in summ["headline"]:
        o, d, t, dd = h["ours"], h["diffusers"], h["top_ranked"], h["diffusers_default"]
        rows.append(
            [
                h["problem"],
                h["schedule"],
                h["output"],
                h["nfe"],
                f"{_cfg(o)}: {_e(o and o['error'])} ({_e(o and o['error_median'])})",
                f"{_cfg(d)}: {_e(d and d['error'])} ({_e(d and d['error_median'])})",
                _ratio(h["ratio"]),
                _MET[h["target_met"]],
                f"{_e(t and t['error'])} ({_ratio(h['top_ranked_ratio'])})",
                f"{_e(dd['error_vs_t_min'])} (t = {dd['t_end']:.3g})" if dd else "-",
            ]
        )
    return lines + _table(
        [
            "problem",
            "schedule",
            "output",
            "NFE",
            "ours: best fixed grid (error, median)",
            "diffusers: best (error, median)",
            "ratio",
            "target",
            "top-ranked (ratio)",
            "diffusers default",
        ],
        rows,
    )


def _md_ranking(result: dict) -> list[str]:
    s, summ, lines = result["settings"], result["summary"], []
    nfes = ", ".join(map(str, s["target_nfe"]))
    for out in ("state", "x0"):
        rk = summ["ranking"][out]
        lines += [
            "",
            f"## Our configurations ranked ({out} output)",
            "",
            "Regret = geometric mean over problems x schedules x NFE of error / (best error of ours in that "
            "cell); worst = the largest such ratio.",
            "",
            f"By RMS error, NFE {nfes}:",
            "",
        ]
        lines += _table(
            ["rank", "configuration", "grid", "regret", "worst"],
            [
                [i + 1, f"`{r['config']}`", r["grid"], f"{r['regret']:.2f}", f"{r['worst']:.1f}"]
                for i, r in enumerate(rk["target_nfe"])
            ],
        )
        lines += [
            "",
            f"By median error, NFE {nfes}: "
            + "; ".join(f"`{r['config']}` @ {r['grid']} ({r['regret']:.2f})" for r in rk["target_nfe_median"]),
        ]
        for n in s["nfe"]:
            lines += [
                "",
                f"Top 5 at NFE {n}: "
                + "; ".join(f"`{r['config']}` @ {r['grid']} ({r['regret']:.2f})" for r in rk[f"nfe_{n}"]),
            ]
    return lines


def _md_candidates(result: dict) -> list[str]:
    s, rows = result["settings"], result["summary"]["candidates"]
    if not rows:
        return []
    lines = [
        "",
        "## Candidate defaults",
        "",
        "Regret (state output) at each NFE separately, over all problems and "
        "schedules: RMS-error regret / median-error regret (1 = the best of ours in every cell).",
        "",
    ]
    return lines + _table(
        ["configuration", "grid", *(f"NFE {n}" for n in s["nfe"])],
        [
            [
                f"`{r['config']}`",
                r["grid"],
                *(f"{_ratio(r[f'rms_{n}'])} / {_ratio(r[f'median_{n}'])}" for n in s["nfe"]),
            ]
            for r in rows
        ],
    )


def _md_precision(result: dict) -> list[str]:
    s = result["settings"]
    prec: dict = defaultdict(dict)
    for r in result["precision"]:
        k = (r["problem"], r["schedule"], r["config"], r["nfe_budget"])
        prec[k][r["model_dtype"]] = f"{_e(r['error_vs_float64'])} ({_e(r.get('median_vs_float64'))})"
        prec[k]["solver"] = r["solver_error"]
    lines = [
        "",
        "## Precision of the network output",
        "",
        f"Network output cast to the dtype and back (float32 state), grid {s['precision_grid']}: RMS (median) "
        "difference to the float64 run of the same configuration; solver error = float64 run vs reference.",
        "",
    ]
    return lines + _table(
        ["problem", "schedule", "configuration", "NFE", "solver error", *MODEL_DTYPES],
        [
            [p, sc, f"`{c}`", n, _e(v["solver"]), *(v.get(d, "-") for d in MODEL_DTYPES)]
            for (p, sc, c, n), v in prec.items()
        ],
    )


def _md_notes(result: dict) -> list[str]:
    runs, summ = result["runs"], result["summary"]
    f32 = sorted({r["family"] for r in runs if r.get("default_dtype") == "float32"})
    lines = [
        "",
        "## lower_order_final",
        "",
        "Geometric mean of error(true) / error(false) over grids, problems, schedules and outputs.",
        "",
    ]
    logsnr = {(r["family"], r["nfe"]): r["ratio_true_over_false"] for r in summ["lower_order_final_logsnr"]}
    lines += _table(
        ["family", "NFE", "ratio (all grids)", "cases", "ratio (logsnr grid)"],
        [
            [
                f"`{r['family']}`",
                r["nfe"],
                f"{r['ratio_true_over_false']:.3f}",
                r["cases"],
                _ratio(logsnr.get((r["family"], r["nfe"]))),
            ]
            for r in summ["lower_order_final"]
        ],
    )
    lines += [
        "",
        "## Which grid wins",
        "",
        "Number of our configurations whose best grid is each grid (state output, summed over problems).",
        "",
    ]
    lines += _table(
        ["schedule", "NFE", "wins"],
        [[r["schedule"], r["nfe"], ", ".join(f"{g} {c}" for g, c in r["wins"].items())] for r in summ["grid_wins"]],
    )
    lines += ["", "## Failed runs", ""]
    lines += (
        _table(
            ["library", "family", "grid", "final", "runs", "NFE", "reason"],
            [
                [
                    f["library"],
                    f["family"],
                    f["grid"],
                    f["final"] or "-",
                    f["runs"],
                    ", ".join(map(str, f["nfe"])),
                    f["reason"],
                ]
                for f in summ["failures"]
            ],
        )
        if summ["failures"]
        else ["none"]
    )
    skipped = defaultdict(set)
    for k in result["diffusers_skipped"]:
        skipped[k["reason"][:100]].add(k["config"].split("(")[0])
    lines += [
        "",
        "## Notes",
        "",
        f"- diffusers runs: {sum(r['library'] == 'diffusers' for r in runs)} "
        f"({sum(r['library'] == 'diffusers' and not r['eligible'] for r in runs)} whose last evaluation is "
        f"above t_min: not eligible as best); ours: {sum(r['library'] == 'ours' for r in runs)}.",
        f"- diffusers classes that round the state to float32 inside `step`: {', '.join(ROUNDS_STATE)}; every "
        "diffusers sigma table is float32.",
        f"- diffusers classes that fail with a float64 default dtype (run with float32 defaults, float64 "
        f"state): {', '.join(f32) if f32 else 'none'}.",
    ]
    lines += [f"- skipped diffusers (config, budget) pairs ({', '.join(sorted(v))}): {k}" for k, v in skipped.items()]
    return lines + [""]


def to_markdown(result: dict) -> str:
    env, summ = result["environment"], result["summary"]
    lines = [
        "# Accuracy benchmark",
        "",
        f"Command: `{result.get('command', 'python benchmarks/accuracy.py')}` -- "
        f"{result['timing']['total_s']:.0f} s ({env['jobs']} processes, {env['cpus']} CPUs), torch "
        f"{env['torch']}, diffusers {env['diffusers']}, k-diffusion {env.get('k-diffusion')}.",
        "",
        f"Targets (issue 14): {summ['target']['criterion_calibrated']} -- calibrated met in "
        f"**{summ['target']['met_calibrated']} of {summ['target']['cells_calibrated']}** cells, default in "
        f"**{summ['target']['met_default']} of {summ['target']['cells_default']}**. Earlier target (issue 4): "
        f"{summ['target']['criterion']} -- met in **{summ['target']['met']} of {summ['target']['cells']}** cells "
        "with our named grids.",
        "",
        "## Problems and references",
        "",
    ]
    lines += _table(
        [
            "problem",
            "schedule",
            "dim",
            "batch",
            "t_start -> t_end",
            "reference (dopri5) NFE",
            "reference error estimate",
        ],
        [
            [
                p["problem"],
                p["schedule"],
                p["dim"],
                p["n"],
                f"{p['t_start']:g} -> {p['t_end']:g}",
                p["reference"]["nfe"],
                _e(p["reference"]["error_estimate"]),
            ]
            for p in result["problems"]
        ],
    )
    lines.append("")
    for part in (_md_target, _md_default, _md_head, _md_ranking, _md_candidates, _md_precision, _md_notes):
        lines += part(result)
    return "\n".join(lines)
