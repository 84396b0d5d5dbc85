"""Training throughput: the project's loop (utils.training + --precision auto) vs a plain fp32 loop.

The loops run the same model on the same in-memory batches, interleaved (plain, ours, ours with
--compile, plain, ...) so that machine drift hits all alike; the median images/s of each is reported
with the ratio. The compiled loop's one-time compile (first steps) is timed and printed apart.
The plain loop runs in a child process started with the interpreter's defaults, because the project's
loop changes a process-wide setting (glibc keeps freed blocks: utils.host_memory.keep_freed_host_memory);
`--plain_in_process` runs it in this process instead, with that setting, to show what it alone gives.
`--accuracy_epochs N` also trains resnet20 for N epochs both ways on a CIFAR-10 subset (or digits)
and prints the val accuracy each reaches, to show the fast path loses no accuracy.
On CUDA every timed section waits for the device's queued work before it reads the clock (kernels
run asynchronously), at its start and at its end. At start it prints the CPU's relevant features
(utils.cpu_features) and the path `--precision auto` takes on the device (utils.runtime.resolve_precision).

    python bench/train_throughput.py --models resnet20 vgg16
    python bench/train_throughput.py --models resnet20 --epoch --train_limit 45000 --data_dir data
    python bench/train_throughput.py --models resnet20 --accuracy_epochs 5 --data_dir data
"""
import argparse
import multiprocessing
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import model_loader  # noqa: E402
from utils.cpu_features import cpu_features  # noqa: E402
from utils.host_memory import keep_freed_host_memory  # noqa: E402
from utils.runtime import Precision, cpu_supports_bf16, resolve_precision, set_seed, to_device  # noqa: E402
from utils.training import train_one_epoch  # noqa: E402


def synchronize(device):
    """Wait until the device has run everything queued on it (CUDA kernels run asynchronously); CPU: no-op."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device):
    """time.perf_counter() once `device` is idle: every timed section starts and ends with it, so on CUDA
    a section neither inherits the work queued before it nor stops the clock before its own work ran."""
    synchronize(device)
    return time.perf_counter()


def plain_loop(model, batches, opt, device):
    """The reference: fp32, default memory layout, a textbook SGD loop. Returns (seconds, images)."""
    model.train()
    t0, n = clock(device), 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
    return clock(device) - t0, n


def plain_steps(model, batches, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    secs, n = plain_loop(model, batches, opt, next(model.parameters()).device)
    return n / secs


def random_batches(batch_size, steps):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
            for _ in range(steps)]


class PlainLoop:
    """The plain loop's models, batches and DataLoaders, built on first use and kept between repeats."""

    def __init__(self, device):
        self.device, self.kept = torch.device(device), {}

    def steps(self, m_name, batch_size, steps):
        """images/s of `steps` plain steps on fixed random batches (a warm-up runs once first)."""
        key = ("steps", m_name, batch_size, steps)
        if key not in self.kept:
            model, batches = model_loader(m_name).to(self.device), random_batches(batch_size, steps)
            plain_steps(model, batches[:2])  # warm-up (allocators, oneDNN primitive caches)
            self.kept[key] = model, batches
        return plain_steps(*self.kept[key])

    def epoch(self, m_name, data_dir, dataset, train_limit, workers):
        """(seconds, images) of one plain epoch fed by the torchvision-transform DataLoader."""
        from data.data_loader import data_loader

        key = ("epoch", m_name, data_dir, dataset, train_limit, workers)
        if key not in self.kept:
            classic = data_loader(data_dir, dataset=dataset, backend="loader", num_workers=workers,
                                  train_limit=train_limit, download=False)
            torch.manual_seed(0)
            model = model_loader(m_name).to(self.device)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            self.kept[key] = model, classic.train, opt
        model, loader, opt = self.kept[key]
        return plain_loop(model, loader, opt, self.device)

    def close(self):
        self.kept.clear()


def _serve_plain_loop(conn, device, threads):
    torch.set_num_threads(threads)
    loop = PlainLoop(device)
    for method, args in iter(conn.recv, None):
        conn.send(getattr(loop, method)(*args))


class PlainLoopProcess:
    """PlainLoop in a spawned child process: a fresh interpreter with default settings, as a user's loop
    would run. Each call blocks until the child answers, so the two processes never run at once."""

    def __init__(self, device):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: the child's DataLoader starts worker processes of its own.
        self.proc = ctx.Process(target=_serve_plain_loop, args=(child, str(device), torch.get_num_threads()))
        self.proc.start()
        child.close()

    def _call(self, method, *args):
        self.conn.send((method, args))
        return self.conn.recv()

    def steps(self, *args):
        return self._call("steps", *args)

    def epoch(self, *args):
        return self._call("epoch", *args)

    def close(self):
        if self.proc.is_alive():
            self.conn.send(None)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def timed_epoch(model, loader, opt, device, precision):
    """train_one_epoch on an idle device: its clock starts after the work queued before it, and stops
    after its loss .item(), which waits for the epoch's last kernels."""
    synchronize(device)
    return train_one_epoch(model, loader, opt, device, precision)


def project_steps(model, batches, precision, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return timed_epoch(model, batches, opt, device, precision).images_per_s


def compile_warmup(model, batches, precision, device):
    """Seconds of the first compiled steps (graph capture + codegen, or a cache hit)."""
    t0 = clock(device)
    project_steps(model, batches[:2], precision, device)
    return clock(device) - t0


def throughput(plain, m_name, batch_size, steps, repeats, device, with_compile):
    precision = resolve_precision("auto", device, compile=False)
    compiled = resolve_precision("auto", device, compile=True)
    batches = random_batches(batch_size, steps)
    ours = to_device(model_loader(m_name), device, precision)
    ours_c = to_device(model_loader(m_name), device, compiled) if with_compile else None
    project_steps(ours, batches[:2], precision, device)  # warm-up (allocators, oneDNN primitive caches)
    t_compile = compile_warmup(ours_c, batches, compiled, device) if with_compile else float("nan")
    a, b, c = [], [], []
    for _ in range(repeats):
        a.append(plain.steps(m_name, batch_size, steps))
        b.append(project_steps(ours, batches, precision, device))
        if with_compile:
            c.append(project_steps(ours_c, batches, compiled, device))
    med_c = statistics.median(c) if c else float("nan")
    return statistics.median(a), statistics.median(b), med_c, t_compile, precision.name


def whole_epoch(plain, m_name, data_dir, train_limit, workers, device, with_compile, repeats=1):
    """Training epochs including data loading: plain fp32 + torchvision DataLoader vs the project's path
    (eager, and compiled after a separately timed warm-up on two batches). With repeats > 1 the paths
    take turns (plain, ours, ours compiled, plain, ...) and each one's median epoch time is returned."""
    from data.data_loader import data_loader

    name = "CIFAR10" if os.path.isdir(os.path.join(data_dir, "cifar10")) else "digits"
    fast = data_loader(data_dir, dataset=name, backend="tensor", train_limit=train_limit, download=False, device=device)
    ours, warm = {}, {}
    for flag in (False, True) if with_compile else (False,):
        precision = resolve_precision("auto", device, compile=flag)
        model = to_device(model_loader(m_name), device, precision)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        warm[precision.name] = compile_warmup(model, [next(iter(fast.train))] * 2, precision, device) if flag else 0.0
        ours[precision.name] = (model, opt, precision)
    t_plain, times = [], {k: [] for k in ours}
    for _ in range(repeats):
        secs, n = plain.epoch(m_name, data_dir, name, train_limit, workers)
        t_plain.append(secs)
        for key, (model, opt, precision) in ours.items():
            times[key].append(timed_epoch(model, fast.train, opt, device, precision).seconds)
    return name, n, t_plain, {k: (v, warm[k]) for k, v in times.items()}


def accuracy_both_ways(epochs, data_dir, train_limit, device, seeds=(0,)):
    from data.data_loader import data_loader
    from utils.training import evaluate

    have_cifar = os.path.isdir(os.path.join(data_dir, "cifar10"))
    data = data_loader(data_dir, dataset="CIFAR10" if have_cifar else "digits", device=device,
                       train_limit=train_limit, download=False)
    rows = []
    for seed, prec in [(s, p) for s in seeds for p in (Precision(), resolve_precision("auto", device))]:
        set_seed(seed)
        data.train.seed = seed
        model = to_device(model_loader("resnet20"), device, prec)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        t0 = clock(device)
        for e in range(epochs):
            data.train.set_epoch(e)
            train_one_epoch(model, data.train, opt, device, prec)
            sched.step()
        secs = clock(device) - t0
        val_fp32 = evaluate(model, data.val, device, Precision())[0]
        val_same = evaluate(model, data.val, device, prec)[0]
        rows.append((prec.name, seed, secs, val_fp32, val_same))
    return data.describe(), rows


def _secs(values):
    return "/".join(f"{v:.1f}" for v in values)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--accuracy_epochs", type=int, default=0)
    p.add_argument("--train_limit", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epoch", action="store_true",
                   help="also time one whole epoch (--train_limit images) including data loading")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain epoch")
    p.add_argument("--epoch_repeats", type=int, default=1,
                   help="epochs per path, taking turns; the median is reported (this machine drifts ~10%%)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_compile", action="store_true", help="skip the --compile rows (each compiles for ~40-55 s)")
    p.add_argument("--plain_in_process", action="store_true",
                   help="run the plain loop in this process, with the allocator setting the project's loop makes "
                        "(default: in a child process with the interpreter's defaults)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    print_machine(device)
    if args.plain_in_process:
        kept = keep_freed_host_memory(device)
        plain = PlainLoop(device)
        print(f"plain loop: in this process ({'glibc keeps freed blocks' if kept else 'default allocator'})")
    else:
        plain = PlainLoopProcess(device)
        print("plain loop: in a child process with the interpreter's defaults")
    try:
        run_all(args, device, plain)
    finally:
        plain.close()


def print_machine(device):
    """The CPU's relevant features, the GPU if one is used, and what --precision auto resolves to here."""
    print(f"cpu: {cpu_features().describe()}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"gpu: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
              f"bf16 supported {torch.cuda.is_bf16_supported()}")
        why = f"torch.cuda.is_bf16_supported() {torch.cuda.is_bf16_supported()}"
    else:
        why = f"cpu_supports_bf16() {cpu_supports_bf16()}"
    env = os.environ.get("BRIDGE_PRECISION")
    if env:
        why += f"; BRIDGE_PRECISION={env} overrides auto"
    print(f"--precision auto on {device.type}: {resolve_precision('auto', device, compile=False).name} "
          f"(utils.runtime.resolve_precision; {why})", flush=True)


def run_all(args, device, plain):
    with_compile = not args.no_compile
    print(f"{'model':<10} {'plain fp32 img/s':>17} {'ours path':>22} {'ours img/s':>11} {'speed-up':>9}"
          + (f" {'+compile img/s':>15} {'speed-up':>9} {'compile s':>10}" if with_compile else ""))
    for m in args.models:
        a, b, c, t_c, name = throughput(plain, m, args.batch_size, args.steps, args.repeats, device, with_compile)
        print(f"{m:<10} {a:>17.0f} {name:>22} {b:>11.0f} {b / a:>8.2f}x"
              + (f" {c:>15.0f} {c / a:>8.2f}x {t_c:>10.1f}" if with_compile else ""), flush=True)
    if args.epoch:
        for m in args.models:
            name, n, t_plain, times = whole_epoch(plain, m, args.data_dir, args.train_limit, args.workers, device,
                                                  with_compile, args.epoch_repeats)
            med = statistics.median(t_plain)
            print(f"\n{m}, one epoch of {n} {name} training images including data loading "
                  f"(median of {len(t_plain)}, each path's epochs in turn):")
            print(f"  {'plain fp32 + torchvision DataLoader (' + str(args.workers) + ' workers)':<52} {med:7.1f} s  "
                  f"({n / med:.0f} img/s)  epochs {_secs(t_plain)}")
            for path, (secs, warm) in times.items():
                extra = f"  (+ {warm:.1f} s one-time compile before)" if "compile" in path else ""
                mine = statistics.median(secs)
                print(f"  {'ours (' + path + ', in-memory tensors)':<52} {mine:7.1f} s  ({n / mine:.0f} img/s)  "
                      f"speed-up {med / mine:.2f}x  epochs {_secs(secs)}{extra}", flush=True)
    if args.accuracy_epochs:
        desc, rows = accuracy_both_ways(args.accuracy_epochs, args.data_dir, args.train_limit, device, args.seeds)
        print(f"\nresnet20, {args.accuracy_epochs} epochs, {desc}")
        print(f"{'path':<22} {'seed':>4} {'train s':>8} {'val acc (fp32 eval)':>20} {'val acc (same path)':>20}")
        for name, seed, secs, v32, vs in rows:
            print(f"{name:<22} {seed:>4} {secs:>8.0f} {v32:>20.2f} {vs:>20.2f}")
        for name in dict.fromkeys(r[0] for r in rows):
            accs = [r[3] for r in rows if r[0] == name]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"{name:<22} mean val acc {statistics.mean(accs):.2f} ± {sd:.2f} over {len(accs)} seed(s)")


if __name__ == "__main__":
    main()
