"""Stage 1: train the dense model.

SGD (lr 0.1, momentum 0.9, weight decay 5e-4) with a cosine schedule over --epochs, early stopping
on validation accuracy (--patience), the best-validation state saved to

    {work_dir}/{m_name}/checkpoint/ckpt.pth      (our checkpoint format, metrics val_acc / test_acc)

plus `last.pth` (everything needed by --resume), `pretrain_log.csv` and `pretrain_curves.png` in the
same folder. The published cosine (T_max 200 with up to 1,000 epochs) restarts the learning rate
after epoch 200; ours anneals once over --epochs.
"""
import argparse
import os
import time

import torch

from models import MODEL_NAMES, canonical_model_name, model_loader
from utils import cli
from utils import distributed as dist
from utils import paths
from utils.checkpoints import (FORMAT, atomic_torch_save, load_checkpoint, load_state_file, load_state_into,
                               save_checkpoint)
from utils.compute import MacCounter, pass_flops
from utils.errors import BridgeError, CheckpointError
from utils.plots import plot_training_curves
from utils.progress import bar, log
from utils.records import write_csv
from utils.runtime import resolve_device, resolve_precision, rng_state, set_rng_state, set_seed, to_device
from utils.training import evaluate, train_one_epoch


def get_args_parser():
    p = argparse.ArgumentParser("pretrain.py", description="Dense training (stage 1 of BRIDGE)")
    p.add_argument("--m_name", default="vgg16", help=f"model: {', '.join(MODEL_NAMES)}")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--epochs", "--max_epochs", dest="epochs", type=int, default=200,
                   help="cosine schedule length and maximum number of epochs")
    p.add_argument("--patience", type=int, default=30, help="stop after this many epochs without a better val accuracy")
    p.add_argument("--resume", "-r", action="store_true", help="continue an interrupted run from last.pth")
    p.add_argument("--work_dir", default=".", help="folder holding the {m_name}/ output tree")
    cli.add_data_args(p)
    cli.add_runtime_args(p)
    return p


def main(args):
    args.m_name = canonical_model_name(args.m_name)
    cli.print_args(args, "pretrain.py")
    if args.epochs < 1:
        raise BridgeError("--epochs must be at least 1")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, args.compile)
    set_seed(args.seed)
    data = cli.build_data(args, device)
    log(data.describe() + f" | device {device} | precision {precision.name}")

    out_dir = cli.check_writable(paths.pretrain_dir(args.work_dir, args.m_name))
    best_path, last_path = os.path.join(out_dir, paths.DENSE_FILE), os.path.join(out_dir, paths.PRETRAIN_STATE_FILE)
    model = to_device(model_loader(args.m_name), device, precision)
    net = dist.wrap_ddp(model)  # under torchrun: DistributedDataParallel, each process on its shard
    if dist.is_distributed():
        data.train.shard(dist.rank(), dist.world_size())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    start_epoch, best_acc, best_epoch, stale, history = 0, -1.0, 0, 0, []
    if args.resume:
        if not os.path.isfile(last_path):
            raise BridgeError(f"--resume: nothing to resume, {last_path} does not exist")
        state = load_state_file(last_path)
        if state.get("model") != args.m_name:
            raise CheckpointError(f"{last_path} belongs to model {state.get('model')!r}, not {args.m_name!r}")
        load_state_into(model, state["state_dict"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
        stale, history = state["stale"], state["history"]
        set_rng_state(state["rng"])
        log(f"resumed from {last_path}: epoch {start_epoch}, best val acc {best_acc:.2f} (epoch {best_epoch})")

    t0 = time.perf_counter()
    finished = stale >= args.patience or start_epoch >= args.epochs
    epochs = bar(range(start_epoch, args.epochs), desc=f"pretrain {args.m_name}", unit="epoch",
                 initial=start_epoch, total=args.epochs)
    for epoch in epochs:
        if finished:
            break
        data.train.set_epoch(epoch)
        stats = train_one_epoch(net, data.train, optimizer, device, precision, desc=f"epoch {epoch + 1}")
        scheduler.step()
        val_acc, val_loss = evaluate(model, data.val, device, precision)
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch, stale = val_acc, epoch + 1, 0
            save_checkpoint(best_path, model, args.m_name, data.spec.name, "pretrain", args,
                            {"val_acc": val_acc, "val_loss": val_loss}, epoch=epoch + 1)
        else:
            stale += 1
        history.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": stats.loss,
                        "train_acc": stats.acc, "val_loss": val_loss, "val_acc": val_acc, "seconds": stats.seconds,
                        "images": stats.samples,
                        "images_per_s": stats.images_per_s})
        log(f"[pretrain] epoch {epoch + 1}/{args.epochs} | train loss {stats.loss:.4f} acc {stats.acc:.2f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.2f}{' *' if improved else ''} | best {best_acc:.2f} "
            f"| {stats.images_per_s:.0f} img/s")
        finished = stale >= args.patience or epoch + 1 >= args.epochs
        atomic_torch_save({"format": FORMAT, "model": args.m_name, "stage": "pretrain_state",
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "epoch": epoch + 1, "best_val_acc": best_acc, "best_epoch": best_epoch, "stale": stale,
                           "history": history, "rng": rng_state(), "finished": finished}, last_path)
        write_csv(os.path.join(out_dir, "pretrain_log.csv"), history)
        if stale >= args.patience:
            log(f"early stop: no val improvement for {args.patience} epochs")
            break
    epochs.close()

    if not os.path.isfile(best_path):
        raise BridgeError(f"no checkpoint was written to {best_path}")
    best = load_checkpoint(best_path)
    load_state_into(model, best["state_dict"], best_path)
    val_acc, _ = evaluate(model, data.val, device, precision)
    test_acc, test_loss = evaluate(model, data.test, device, precision)
    # every epoch trained counts, not only those up to the best one (older resume states lack "images")
    images = sum(h.get("images", len(data.train.dataset)) for h in history)
    pretrain_flops = pass_flops(MacCounter(model, data.spec.image_size)(model), images, backward=True)
    save_checkpoint(best_path, model, args.m_name, data.spec.name, "pretrain", args,
                    {"val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss}, epoch=best_epoch,
                    pretrain_flops=pretrain_flops, pretrain_images=images)
    if history:
        plot_training_curves(history, os.path.join(out_dir, "pretrain_curves.png"), f"pretrain {args.m_name}")
    log(f"pretraining compute: {images:,} training images, {pretrain_flops:.4g} FLOPs (utils/compute.py)")
    log(f"best epoch {best_epoch}: val acc {val_acc:.2f} | test acc {test_acc:.2f} | "
        f"{time.perf_counter() - t0:.0f} s this run")
    log(f"wrote {best_path} (best-val model), {last_path} (resume state), "
        f"{os.path.join(out_dir, 'pretrain_log.csv')}, {os.path.join(out_dir, 'pretrain_curves.png')}")
    return {"val_acc": val_acc, "test_acc": test_acc, "best_epoch": best_epoch, "path": best_path}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
