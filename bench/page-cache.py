#!/usr/bin/env python3
"""What a pod is charged for the proxy's code, as opposed to what RSS shows (docs/performance.md,
"Memory (issue 16)": RSS, page cache and a pod's working set).

Copies the release binary to a fresh file and drops that file from the page cache, so the pages
cached afterwards are exactly those the proxy's own start-up brought in (as in a new pod, where
nothing else read the image's binary). Starts the proxy from the copy in front of an upstream
left running (`bench/run.sh --targets direct --rounds 1 --duration 1 --keep-running`), sends 200
requests, waits IDLE_SECONDS (default 15: past the idle release of src/memory.rs), then reports
the proxy's RssAnon / RssFile, how much of the binary is in the page cache, how much of that
the proxy maps, and how much is on the kernel's active LRU list (/proc/kpageflags).
`container_memory_working_set_bytes` is the cgroup's usage minus its inactive file pages, so
the active ones are the code pages a pod's working set counts. Needs root (/proc/kpageflags,
frame numbers in /proc/PID/pagemap).

Usage: bench/page-cache.py  (MEDUSA_AUTH_PROXY_BIN, BENCH_UPSTREAM_URL, BENCH_PROXY_PORT,
IDLE_SECONDS as for the other scripts)
"""
import ctypes, os, shutil, struct, subprocess, sys, tempfile, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
src = os.environ.get("MEDUSA_AUTH_PROXY_BIN", os.path.join(here, "..", "target/release/medusa-auth-proxy"))
upstream = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:18080")
port = int(os.environ.get("BENCH_PROXY_PORT", "18090"))
idle = float(os.environ.get("IDLE_SECONDS", "15"))
PAGE = 4096
ACTIVE, REFERENCED = 6, 2  # /proc/kpageflags bits

work = tempfile.mkdtemp()
binpath = os.path.join(work, "medusa-auth-proxy")
shutil.copy(src, binpath)
fd = os.open(binpath, os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
size = os.fstat(fd).st_size
npages = (size + PAGE - 1) // PAGE
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
base = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: mincore, no read from disk


def cached():
    vec = (ctypes.c_ubyte * npages)()
    if libc.mincore(ctypes.c_void_p(base), ctypes.c_size_t(size), vec) != 0:
        sys.exit("mincore failed")
    return [i for i in range(npages) if vec[i] & 1]


if cached():
    sys.exit("the copy is still in the page cache; cannot start from a cold binary")
env = dict(os.environ, BENCH_LISTEN_ADDR=f"127.0.0.1:{port}", BENCH_PROXY_PORT=str(port),
           TOKIO_WORKER_THREADS="1", BENCH_UPSTREAM_URL=upstream,
           BENCH_PROXY_DIR=os.path.join(work, "proxy"), MEDUSA_AUTH_PROXY_BIN=binpath)
proxy = subprocess.Popen([os.path.join(here, "proxy-cmd.sh")], env=env, stderr=subprocess.DEVNULL)


def status(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except Exception:
        return 0


try:
    for _ in range(500):
        if status(f"http://127.0.0.1:{port + 1}/readyz") == 200:
            break
        time.sleep(0.02)
    else:
        sys.exit("the proxy did not become ready")
    time.sleep(1)
    for _ in range(200):
        if status(f"http://127.0.0.1:{port}/admin/products") // 100 != 2:
            sys.exit("a request failed")
    time.sleep(idle)
    rss = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{proxy.pid}/status")
           if l.startswith(("RssAnon", "RssFile"))}
    # The file pages the proxy maps now (present, file-backed: pagemap bit 61).
    mapped = set()
    with open(f"/proc/{proxy.pid}/maps") as maps, open(f"/proc/{proxy.pid}/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != binpath:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            pm.seek(lo // PAGE * 8)
            data = pm.read((hi - lo) // PAGE * 8)
            for i in range(len(data) // 8):
                v = struct.unpack_from("Q", data, i * 8)[0]
                if v >> 63 and (v >> 61) & 1:
                    mapped.add(int(f[2], 16) // PAGE + i)
    # Every cached page of the copy: mapped here (resident only, so nothing is read), flags.
    flags = {}
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for i in cached():
            ctypes.c_char.from_address(base + i * PAGE).value  # map it (a minor fault)
            pm.seek((base // PAGE + i) * 8)
            pfn = struct.unpack("Q", pm.read(8))[0] & ((1 << 55) - 1)
            kf.seek(pfn * 8)
            flags[i] = struct.unpack("Q", kf.read(8))[0]
finally:
    proxy.terminate()
    proxy.wait()
    shutil.rmtree(work, ignore_errors=True)


def mib(pages, bit=None):
    n = sum(1 for i in pages if bit is None or flags[i] >> bit & 1)
    return f"{n * PAGE / 1048576:.2f}"


inmap = [i for i in flags if i in mapped]
print(f"{src}: after 200 requests and {idle:.0f} s idle: RssAnon {rss['RssAnon'] / 1024:.2f} MiB, "
      f"RssFile {rss['RssFile'] / 1024:.2f} MiB (all objects)")
print(f"  binary {size / 1048576:.2f} MiB; in the page cache {mib(flags)} MiB, active {mib(flags, ACTIVE)}, "
      f"referenced {mib(flags, REFERENCED)}; mapped by the proxy {mib(inmap)} MiB (active {mib(inmap, ACTIVE)})")
