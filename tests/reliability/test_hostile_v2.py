"""The hostile-input corpus against the Open Inference Protocol (/v2) of a real server.

Every case gets a 4xx with the protocol's error shape, ``{"error": "..."}``, never a 5xx, a
hang or a dropped connection; afterwards memory is where it was and good requests succeed.
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest
from hostile_corpus import ADMIN_KEY, V2, Case, by_kind, send
from reliability_kit import Summary, proc_status, rss_mib
from testkit import LiveServer, ServerFactory

from model_export.datasets import Split

OUTCOMES: dict[str, tuple[Case, int | str, str | None]] = {}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> LiveServer:
    """The default server plus the corpus's admin key: the repository cases test the
    endpoints themselves, past the key (tests/reliability/test_control_plane.py tests it)."""
    return module_server_factory(admin_keys=ADMIN_KEY)


def _infer(client: httpx.Client, images: np.ndarray) -> httpx.Response:
    batch = (images.astype(np.float32)[:, None] / 255.0 - 0.286) / 0.353
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    return client.post("/v2/models/lenet5-fashion/infer", content=orjson.dumps(body))


@pytest.fixture(scope="module")
def memory_before(server: LiveServer, client: httpx.Client, fashion_test: Split) -> float:
    for start in range(0, 40, 8):
        response = _infer(client, fashion_test.images[start : start + 8])
        assert response.status_code == 200, response.text
    return rss_mib(server.process.pid)


@pytest.mark.parametrize("case", V2, ids=[case.name for case in V2])
def test_hostile_v2_case(client: httpx.Client, memory_before: float, case: Case) -> None:
    status, verdict = send(client, case)
    OUTCOMES[case.name] = (case, status, verdict)
    assert verdict is None, f"{case.name}: {verdict}"


def test_v2_memory_is_bounded_and_the_next_good_request_succeeds(
    server: LiveServer,
    client: httpx.Client,
    memory_before: float,
    fashion_test: Split,
    summary: Summary,
) -> None:
    response = _infer(client, fashion_test.images[:4])
    assert response.status_code == 200, response.text
    logits = np.asarray(response.json()["outputs"][0]["data"]).reshape(4, 10)
    assert (logits.argmax(1) == fashion_test.labels[:4]).mean() >= 0.75
    after = rss_mib(server.process.pid)
    peak = proc_status(server.process.pid)["VmHWM"] / 1024
    tracebacks = server.log().count("Traceback")
    for kind, tally in by_kind(OUTCOMES).items():
        summary.row(
            f"hostile-v2/{kind}",
            area="hostile input (/v2)",
            tried=f"{kind}: {tally['cases']} cases",
            held=tally["passed"] == tally["cases"],
            **tally,
        )
    growth = after - memory_before
    summary.row(
        "hostile-v2/memory",
        area="hostile input (/v2)",
        tried=f"server RSS across the {len(OUTCOMES)} /v2 cases",
        held=growth < 64 and tracebacks == 0,
        rss_before_mib=round(memory_before, 1),
        rss_after_mib=round(after, 1),
        peak_rss_mib=round(peak, 1),
        tracebacks_in_log=tracebacks,
    )
    assert growth < 64, f"RSS grew {growth:.0f} MiB ({memory_before:.0f} -> {after:.0f})"
    assert peak < 1024, f"peak RSS {peak:.0f} MiB"
    assert tracebacks == 0, server.log()[-3000:]
