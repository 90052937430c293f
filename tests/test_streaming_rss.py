"""Streaming full-scene prediction: a memmapped scene far larger than what the process holds, output
written incrementally into a memmap, peak private memory (RssAnon) bounded (issue: work on huge scenes on the CPU)."""
import json
import subprocess
import sys
import textwrap

import numpy as np

_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from m3amba.data.windows import sliding_window_logits
    x1 = np.load(sys.argv[1], mmap_mode="r")
    x2 = np.load(sys.argv[2], mmap_mode="r")
    out = np.lib.format.open_memmap(sys.argv[3], mode="w+", dtype=np.float32, shape=(4,) + x1.shape[1:])
    torch.manual_seed(0)
    weight = torch.randn(4, x1.shape[0] + x2.shape[0])
    def predict(b1, b2):  # a pointwise linear "model": window averaging must give it back exactly
        return torch.einsum("kc,bchw->bkhw", weight, torch.cat([b1, b2], 1))
    torch.set_num_threads(1)
    def anon_kib():  # private memory; pages of the memmapped files count as RssFile (page cache), not here
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    import threading, time
    peak_anon, done = [anon_kib()], threading.Event()
    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], anon_kib())
            time.sleep(0.005)
    before = anon_kib()
    t = threading.Thread(target=sample)
    t.start()
    _, counts = sliding_window_logits(predict, x1, x2, 4, window=32, stride=16, batch_size=64, out=out)
    out.flush()
    done.set()
    t.join()
    print(json.dumps({"before_kib": before, "peak_kib": max(peak_anon[0], anon_kib()),
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "min_count": int(counts.min())}))
""")


def test_streaming_prediction_of_a_memmapped_scene_keeps_rss_bounded(tmp_path):
    c1, h, w = 16, 3000, 3000  # 576 MB of float32 on disk for modality 1
    x1 = np.lib.format.open_memmap(tmp_path / "x1.npy", mode="w+", dtype=np.float32, shape=(c1, h, w))
    x2 = np.lib.format.open_memmap(tmp_path / "x2.npy", mode="w+", dtype=np.float32, shape=(1, h, w))
    rng = np.random.default_rng(0)
    for r in range(0, h, 300):  # written in slabs: the test itself never holds the scene either
        x1[:, r:r + 300] = rng.standard_normal((c1, min(300, h - r), w), dtype=np.float32)
        x2[:, r:r + 300] = rng.standard_normal((1, min(300, h - r), w), dtype=np.float32)
    x1.flush(), x2.flush()
    scene_bytes = x1.nbytes + x2.nbytes
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "x1.npy"), str(tmp_path / "x2.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = (r["peak_kib"] - r["before_kib"]) * 1024
    print(f"scene {scene_bytes / 2**20:.0f} MiB + output {4 * h * w * 4 / 2**20:.0f} MiB; private memory "
          f"(RssAnon) grew by {grown / 2**20:.0f} MiB at its peak; ru_maxrss {r['maxrss_kib'] / 2**10:.0f} MiB "
          "(includes reclaimable pages of the memmapped files)")
    assert r["min_count"] >= 1
    # the scene and the logits stay on disk: the process grows by a band of windows, not by the scene
    assert grown < 0.25 * scene_bytes, f"private memory grew by {grown / 2**20:.0f} MiB"
    # spot checks against the pointwise model applied directly
    import torch
    torch.manual_seed(0)
    weight = torch.randn(4, c1 + 1).numpy()
    out = np.load(tmp_path / "out.npy", mmap_mode="r")
    for r0, c0 in ((0, 0), (h - 1, w - 1), (1234, 777), (17, 2999)):
        direct = weight @ np.concatenate([x1[:, r0, c0], x2[:, r0, c0]])
        np.testing.assert_allclose(out[:, r0, c0], direct, rtol=1e-4, atol=1e-4)
