"""`edgeclf serve --ray`: the same app as a Ray Serve deployment, on a local Ray instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeclf.errors import ConfigError
from tests.conftest import blob_image, free_port, make_synthetic_bundle, png_bytes

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
runtime = pytest.importorskip("edgeclf.runtime")


def test_options_are_checked_without_ray(tmp_path: Path) -> None:
    from edgeclf.serve.ray_serve import RayOptions

    for bad, msg in [
        (RayOptions(replicas=0), "replicas"),
        (RayOptions(cpus_per_replica=0), "ray-cpus"),
        (RayOptions(autoscale=True, replicas=5, max_replicas=4), "autoscaling"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            bad.check()
    RayOptions(autoscale=True, replicas=2, min_replicas=1, max_replicas=3).check()


def test_cli_refuses_ray_flags_without_ray(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeclf.cli import app

    b = make_synthetic_bundle(tmp_path / "b")
    r = CliRunner().invoke(app, ["serve", str(b), "--replicas", "2"])
    assert r.exit_code == 2 and "need --ray" in r.output


@pytest.mark.slow
def test_ray_serve_serves_real_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    # a 2-core test machine under load starts Ray Serve's proxy slower than its 5 s default
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    monkeypatch.setenv("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    serve = pytest.importorskip("ray.serve")
    from edgeclf.serve.ray_serve import RayOptions, run

    b = make_synthetic_bundle(tmp_path / "bundle", crop=32, labels=("a", "b", "c"))
    imgs = [blob_image(i, 48) for i in range(4)]
    with runtime.Classifier(b) as clf:
        want = clf.probabilities([np.asarray(im) for im in imgs])
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(b, ray=RayOptions(replicas=2, cpus_per_replica=0.5), port=port, blocking=False)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            assert c.get("/v1/model").json()["labels"] == ["a", "b", "c"]
            for im, w in zip(imgs * 3, np.concatenate([want] * 3), strict=True):
                r = c.post("/v1/classify", content=png_bytes(im), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                top = r.json()["results"][0]["top_k"][0]
                assert top["label"] == ["a", "b", "c"][int(np.argmax(w))]
                assert abs(top["probability"] - float(w.max())) < 1e-5
            bad = c.post("/v1/classify", content=b"not an image", headers={"content-type": "image/png"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_an_image"
            assert "edgeclf_requests_total" in c.get("/metrics").text
        status = serve.status().applications["edgeclf"]
        assert status.status == "RUNNING"
        assert status.deployments["edgeclf"].replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
