"""Uploads are bounded on what they decode to: a decoding bomb is a quick, cheap 413, and a
dataset that is accepted can be trained on."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.config import Limits
from app.main import create_app
from tests.helpers import ApiServer

GIB = 1024**3
SMALL_CSV = b"a,b,y\n1,2,0\n3,4,1\n5,6,0\n"


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: the API server is a thread of this process."""
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextmanager
def peak_growth() -> Iterator[dict[str, int]]:
    """Bytes the process's resident memory peaked above where it started (VmRSS before,
    VmHWM after; the high-water mark is reset first, or sampled where it cannot be)."""
    result = {"growth": 0}
    before = _status_kib("VmRSS")
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        sampled = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                sampled.append(_status_kib("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield result
        finally:
            done.set()
            sampler.join()
        result["growth"] = (max(sampled) - before) * 1024
        return
    yield result
    result["growth"] = (_status_kib("VmHWM") - before) * 1024


def write_bomb(path: Path) -> None:
    """The issue's bomb: 5,000,000 rows x 201 zero float columns, zstd, a few MB on disk.

    float32 without dictionary or statistics writes twice as fast as pyarrow's defaults; it
    decodes to 4 GB (the float64 original, 4.5 MB on disk, to 8 GB).
    """
    zeros = pa.array(np.zeros(5_000_000, dtype=np.float32))
    table = pa.table({f"f{i}": zeros for i in range(200)} | {"y": zeros})
    pq.write_table(table, path, compression="zstd", use_dictionary=False, write_statistics=False)


def test_a_parquet_decoding_bomb_is_a_cheap_413(client: httpx.Client, tmp_path: Path):
    path = tmp_path / "bomb.parquet"
    write_bomb(path)
    data = path.read_bytes()
    assert len(data) < 8 * 1024 * 1024
    assert pq.ParquetFile(path).metadata.num_rows == 5_000_000
    cells = "5000000 rows x 200 features = 1000000000 cells; at most 600000000 (max_cells)"

    with peak_growth() as memory:
        multipart = client.post(
            "/datasets",
            files={"file": ("bomb.parquet", data, "application/octet-stream")},
            data={"target": "y"},
        )
        raw = client.post(
            "/datasets",
            content=data,
            params={"target": "y"},
            headers={"content-type": "application/octet-stream"},
        )
    print(f"bomb: {len(data)} bytes, 2 uploads grew the API by {memory['growth']} B")

    for response in (multipart, raw):
        assert response.status_code == 413, response.text
        assert response.json()["detail"] == [
            {"loc": ["body", "file"], "msg": cells, "type": "too_large"}
        ]
    assert memory["growth"] <= GIB
    # The service answers normally right after.
    assert client.get("/healthz").status_code == 200
    assert client.get("/datasets").json()["items"] == []
    small = client.post(
        "/datasets", files={"file": ("small.csv", SMALL_CSV, "text/csv")}, data={"target": "y"}
    )
    assert small.status_code == 201, small.text


def test_an_accepted_dataset_can_be_trained_on_and_one_over_the_limits_says_why(settings):
    limits = Limits(max_rows=100, max_cells=200)
    app = create_app(settings.model_copy(update={"limits": limits}))

    def csv(rows: int, features: int) -> bytes:
        header = ",".join(f"x{j}" for j in range(features)) + ",y\n"
        body = "".join(
            ",".join(str(i + j) for j in range(features)) + f",{i % 2}\n" for i in range(rows)
        )
        return (header + body).encode()

    def upload(http: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
        files = {"file": ("data.csv", data, "text/csv")}
        return http.post("/datasets", files=files, data={"target": "y", **fields})

    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        at_limits = upload(http, csv(100, 2))
        assert at_limits.status_code == 201, at_limits.text
        dataset = at_limits.json()
        spec = {
            "dataset": {"type": "dataset", "id": dataset["id"], "target": "y"},
            "model": {"type": "linear"},
            "epochs": 1,
        }
        assert http.post("/runs", json=spec).status_code == 201

        too_many_rows = upload(http, csv(101, 1))
        assert too_many_rows.status_code == 413
        assert too_many_rows.json()["detail"][0]["msg"] == (
            "at least 101 rows; at most 100 (max_rows)"
        )
        too_many_cells = upload(http, csv(100, 3))
        assert too_many_cells.status_code == 413
        assert (
            "100 rows x 3 features = 300 cells; at most 200"
            in (too_many_cells.json()["detail"][0]["msg"])
        )
        # Fewer features of the same file fit.
        two = upload(http, csv(100, 3), features="x0,x2")
        assert two.status_code == 201, two.text
        columns = {"x": list(range(101)), "y": [i % 2 for i in range(101)]}
        json_body = http.post("/datasets", json={"target": "y", "columns": columns})
        assert json_body.status_code == 413
        assert json_body.json()["detail"][0]["loc"] == ["body", "columns"]
        assert len(http.get("/datasets").json()["items"]) == 2
