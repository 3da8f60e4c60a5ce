"""The whole chain, small: every step runs and leaves its outputs and numbers."""

import json
import re
from pathlib import Path

import lsdb

from galspec_batch.demo import DemoSettings, run_demo

EXAMPLES = Path(__file__).parents[1] / "catalogs" / "examples.md"


def test_demo_runs_the_whole_chain(tmp_path, monkeypatch):
    # 6 CNN epochs: at 3 the CNN had not left the mean (validation RMSE 0.95-1.12 over seeds 0-2 on
    # the old mock too), so the RMSE and AUC bounds below tested the seed, not the chain
    settings = DemoSettings(n_galaxies=400, image_size=24, vae_epochs=8, cnn_epochs=6, mc_samples=8,
                            test_fraction=1.0, test_anomaly_rate=0.05)
    summary = run_demo(tmp_path / "demo", settings, progress=False)
    n = summary.numbers
    assert n["catalog_rows"] == 400 and len(lsdb.read_hats(tmp_path / "demo" / "catalog").compute()) == 400
    assert 0 < n["val_rmse"] < 1.1 and len(n["val_rmse_latents"]) == 6
    science = n["science"]
    assert n["n_anomalies"] > 5 and 0.5 < science["auc"] <= 1.0
    assert science["calibrated"]["targets"] == [f"latent_{i}" for i in range(1, 7)] + ["z"]
    for k in ("1", "2", "3"):
        assert all(0 <= c <= 1 for c in science["calibrated"]["coverage"][k] + science["raw"]["coverage"][k])
    assert 0 < science["photoz"]["cnn"]["nmad"] < 0.2 and set(science["anomalies"]) == {"0.01", "0.001"}
    rmse = science["rmse"]
    assert set(rmse) == {"cnn", "colour", "mean"} and all(lo <= v <= hi for v, lo, hi in rmse.values())
    assert 0.95 < rmse["mean"][0] < 1.1 and rmse["colour"][0] < rmse["mean"][0]
    assert science["photoz"]["colour"]["nmad"] < science["photoz"]["mean"]["nmad"]
    assert "2-sigma" in str(summary) and "z_phot (cnn): NMAD" in str(summary)
    assert len(n["figures"]) == 8
    assert all((tmp_path / "demo" / f).stat().st_size > 10_000 for f in n["figures"])
    for name in ("targets-starforming.fits", "targets-uncertain.csv", "anomalies.parquet",
                 "decoded.parquet", "cnn/best/config.json", "cnn/best/calibration.json", "demo.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["numbers"]["catalog_rows"] == 400
    assert "ROC AUC" in str(summary)

    # the outputs open in the ecosystem's readers: catalogs/examples.md, run verbatim in the demo's directory
    blocks = re.findall(r"```python\n(.*?)```", EXAMPLES.read_text(), re.S)
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path / "demo")
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(EXAMPLES), "exec"), namespace)  # noqa: S102 (our own documentation)
    assert len(namespace["matched"]) == 400 and len(namespace["with_lines"]) == 400
    assert str(namespace["targets"]["ra"].unit) == "deg" and (tmp_path / "demo" / "coverage.png").exists()
