"""Drift monitoring, measured on synthetic series with known changes and on a real NDVI series.

Synthetic (``seamline.core.demo.series.make_series``, one landscape, summer dates so phenology is
flat): the baseline is fitted (with the demo model) on acquisitions 0..7; acquisitions 8.. with no
change give the false-alarm rate; four series switch one known change on at acquisition 12
(sensor gain +10 %, construction on 5 % of the area, 10 % cloud cover, and phenology: the
first date past mid-October); the construction scene's drift map is compared with the tiles
whose labels changed; the sensor-step scene goes through the re-fit response.

Real (``../shared/data/eo_timeseries``, 68 Sentinel-2 NDVI scenes 2015-2017): the baseline is
the clear (< 1 % cloud) June-August 2015 scenes; every date is scored, and the score's
correlation with the cloud fraction is reported.

Aims (issue #5): false alarms <= 5 %; every change flagged at its first scene; construction
tile IoU >= 0.7; winter and cloudy dates high, clear summer 2016/2017 dates low; after the
re-fit response the sensor-step score is back under the threshold.

Usage: ``python benchmarks/drift_eval.py [--size 256] [--quiet 60] [--tile 16]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seamline.core.demo.data import eo_timeseries  # noqa: E402
from seamline.core.demo.series import SeriesEvents, make_series
from seamline.core.hardware import cpu_info, cpu_label  # noqa: E402
from seamline.core.models.modelio import load_model  # noqa: E402
from seamline.core.monitor.check import check  # noqa: E402
from seamline.core.monitor.fit import fit_baseline  # noqa: E402
from seamline.core.monitor.refit import assess_refit  # noqa: E402
from seamline.core.predict.scene import predict_scene  # noqa: E402

EO_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eo_timeseries"
BASELINE_SCENES = 8
CHANGE_AT = 12
START = "2024-05-01"  # with 2-day steps, acquisitions up to 83 are summer (season >= 0)
NONE = dict(recalibration_index=None, construction_start_index=None, cloudy_indices=())
CHANGES = {
    "sensor gain +10 %": SeriesEvents(**{**NONE, "recalibration_index": CHANGE_AT,
                                         "recalibration_gain": 1.10, "recalibration_offset": 0.0}),
    "construction 5 %": SeriesEvents(**{**NONE, "construction_start_index": CHANGE_AT,
                                        "construction_rate": 0.2}),
    "clouds 10 %": SeriesEvents(**{**NONE, "cloudy_indices": (CHANGE_AT,), "cloud_cover": 0.1}),
}  # fmt: skip
PHENOLOGY_START = "2024-06-22"  # 10-day steps: acquisition 11 is 10 Oct (summer), 12 is 20 Oct
SUMMER = (6, 7, 8)
WINTER = (12, 1, 2)


def synthetic(args: argparse.Namespace, model) -> dict:
    def series(n, events=None, start=START, freq=2):
        events = events or SeriesEvents(**NONE)
        return make_series(n, height=args.size, width=args.size, start=start, freq_days=freq,
                           events=events)  # fmt: skip

    quiet = series(BASELINE_SCENES + args.quiet)
    assert min(s.season for s in quiet) >= 0, "no-change scenes must all be summer: lower --quiet"
    start = time.perf_counter()
    base = fit_baseline([s.scene for s in quiet[:BASELINE_SCENES]], model, tile_size=args.tile)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    quiet_results = [check(s.scene, base, model=model) for s in quiet[BASELINE_SCENES:]]
    check_seconds = (time.perf_counter() - start) / len(quiet_results)
    scores = np.array([r.score for r in quiet_results])

    changes = {}
    runs = {name: series(CHANGE_AT + 1, events) for name, events in CHANGES.items()}
    runs["phenology (20 Oct)"] = series(CHANGE_AT + 1, start=PHENOLOGY_START, freq=10)
    for name, items in runs.items():
        results = [check(s.scene, base, model=model) for s in items[BASELINE_SCENES:]]
        first = results[-1]
        changes[name] = {
            "date": items[-1].time.date().isoformat(),
            "events": list(items[-1].events),
            "season": items[-1].season,
            "score": first.score,
            "driver": first.driver,
            "flagged_at_first_scene": first.drift,
            "false_alarms_before": sum(r.drift for r in results[:-1]),
            "checked_before": len(results) - 1,
        }
    assert runs["phenology (20 Oct)"][-1].season < 0 <= runs["phenology (20 Oct)"][-2].season

    built = runs["construction 5 %"]
    changed = built[-1].labels.values != built[-2].labels.values
    cells = -(-args.size // args.tile)
    pad = cells * args.tile - args.size
    share = np.pad(changed, ((0, pad), (0, pad))).reshape(cells, args.tile, cells, args.tile)
    share = share.mean(axis=(1, 3))
    flagged = check(built[-1].scene, base).drift_map.values > 1
    localisation = {"changed_area": float(changed.mean()), "tiles": int(share.size),
                    "flagged_tiles": int(flagged.sum())}  # fmt: skip
    for name, truth in (("any", share > 0), ("ge_10pct", share >= 0.1)):
        localisation[f"true_tiles_{name}"] = int(truth.sum())
        localisation[f"iou_{name}"] = float((truth & flagged).sum() / (truth | flagged).sum())

    stepped = runs["sensor gain +10 %"]
    reference = predict_scene(model, stepped[-2].scene)
    refit = assess_refit(stepped[-1].scene, base, model=model, reference=reference)
    labels = stepped[-1].labels.values
    accuracy = {
        when: float((result.prediction.values == labels).mean())
        for when, result in (("before", refit.before), ("after", refit.after))
    }
    return {
        "size": args.size,
        "tile": args.tile,
        "baseline_scenes": BASELINE_SCENES,
        "thresholds": base.thresholds,
        "fit_seconds": fit_seconds,
        "check_seconds": check_seconds,
        "no_change": {
            "scenes": len(scores),
            "false_alarms": int((scores > 1).sum()),
            "false_alarm_rate": float((scores > 1).mean()),
            "score_median": float(np.median(scores)),
            "score_max": float(scores.max()),
        },
        "changes": changes,
        "localisation": localisation,
        "refit": {**refit.to_dict(), "accuracy_before": accuracy["before"],
                  "accuracy_after": accuracy["after"]},
    }  # fmt: skip


def real(tile: int) -> dict | None:
    if not EO_DATA.is_dir():
        return None
    scenes = eo_timeseries(EO_DATA)
    chosen = [s for s in scenes if s.time.year == 2015 and s.time.month in SUMMER
              and s.cloud_fraction < 0.01]  # fmt: skip
    base = fit_baseline([s.scene for s in chosen], tile_size=tile)
    rows = []
    for s in scenes:
        result = check(s.scene, base)
        rows.append({"date": s.time.date().isoformat(), "cloud_fraction": s.cloud_fraction,
                     "score": result.score, "drift": result.drift, "driver": result.driver,
                     "drifted_tiles": result.drifted_tiles})  # fmt: skip
    score = np.array([r["score"] for r in rows])
    cloud = np.array([s.cloud_fraction for s in scenes])
    month = np.array([s.time.month for s in scenes])
    year = np.array([s.time.year for s in scenes])
    clear_summer = (year > 2015) & np.isin(month, SUMMER) & (cloud < 0.01)
    clear_winter = np.isin(month, WINTER) & (cloud < 0.01)
    cloudy = cloud >= 0.5
    return {
        "baseline_dates": [s.time.date().isoformat() for s in chosen],
        "thresholds": base.thresholds,
        "tile": tile,
        "pearson_score_cloud": float(stats.pearsonr(score, cloud).statistic),
        "spearman_score_cloud": float(stats.spearmanr(score, cloud).statistic),
        "clear_summer_2016_2017": {"dates": int(clear_summer.sum()),
                                   "max_score": float(score[clear_summer].max()),
                                   "flagged": int((score[clear_summer] > 1).sum())},
        "clear_winter": {"dates": int(clear_winter.sum()),
                         "min_score": float(score[clear_winter].min()),
                         "flagged": int((score[clear_winter] > 1).sum())},
        "cloudy_ge_50pct": {"dates": int(cloudy.sum()), "min_score": float(score[cloudy].min()),
                            "flagged": int((score[cloudy] > 1).sum())},
        "per_date": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="synthetic scene side, pixels")
    parser.add_argument("--quiet", type=int, default=60, help="no-change scenes to check")
    parser.add_argument("--tile", type=int, default=16, help="drift map cell, pixels")
    args = parser.parse_args()

    model = load_model("demo")
    report = {"benchmark": "drift_eval", "machine": cpu_info(),
              "synthetic": synthetic(args, model), "real": real(tile=10)}  # fmt: skip
    print(json.dumps(report, indent=2))

    syn, eo = report["synthetic"], report["real"]
    quiet = syn["no_change"]
    print(f"\ndrift_eval on {cpu_label()}")
    print(
        f"synthetic {syn['size']}^2, baseline {syn['baseline_scenes']} scenes + demo model; "
        f"fit {syn['fit_seconds']:.1f} s, check {syn['check_seconds']:.2f} s/scene"
    )
    print(
        f"  no change: {quiet['false_alarms']}/{quiet['scenes']} false alarms "
        f"({100 * quiet['false_alarm_rate']:.1f} %, aim <= 5 %), score median "
        f"{quiet['score_median']:.2f}, max {quiet['score_max']:.2f}"
    )
    print(f"  {'change':<22}{'date':>12}{'score':>9}  flagged  earlier false alarms  driver")
    for name, c in syn["changes"].items():
        print(
            f"  {name:<22}{c['date']:>12}{c['score']:>9.2f}  {str(c['flagged_at_first_scene']):<7}"
            f"  {c['false_alarms_before']}/{c['checked_before']:<19}  {c['driver']}"
        )
    loc = syn["localisation"]
    print(
        f"  construction map: {loc['flagged_tiles']} tiles flagged of {loc['tiles']}; IoU "
        f"{loc['iou_any']:.2f} vs tiles with any changed pixel ({loc['true_tiles_any']}), "
        f"{loc['iou_ge_10pct']:.2f} vs >= 10 % changed ({loc['true_tiles_ge_10pct']}); aim 0.7"
    )
    ref = syn["refit"]
    print(
        f"  sensor step re-fit: score {ref['score_before']:.1f} -> {ref['score_after']:.2f} "
        f"(threshold 1); agreement with the pre-step prediction {ref['agreement_before']:.4f} "
        f"-> {ref['agreement_after']:.4f}; accuracy {ref['accuracy_before']:.4f} -> "
        f"{ref['accuracy_after']:.4f}"
    )
    if eo is None:
        print(f"real data: skipped ({EO_DATA} not found)")
        return
    print(
        f"real eo_timeseries: baseline {', '.join(eo['baseline_dates'])}; score vs cloud "
        f"fraction: Pearson {eo['pearson_score_cloud']:.2f}, Spearman "
        f"{eo['spearman_score_cloud']:.2f}"
    )
    for key in ("clear_summer_2016_2017", "clear_winter", "cloudy_ge_50pct"):
        g = eo[key]
        extreme = f"max {g['max_score']:.2f}" if "max_score" in g else f"min {g['min_score']:.2f}"
        print(f"  {key:<24}{g['dates']:>3} dates, {g['flagged']:>2} flagged, score {extreme}")
    print(f"  {'date':<12}{'cloud':>7}{'score':>8}  drift")
    for r in eo["per_date"]:
        print(f"  {r['date']:<12}{r['cloud_fraction']:>7.2f}{r['score']:>8.2f}  {r['drift']}")


if __name__ == "__main__":
    main()
