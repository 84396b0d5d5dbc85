"""Stage 1: train the dense model.

SGD (lr 0.1, momentum 0.9, weight decay 5e-4) with a cosine schedule over --epochs, early stopping
on validation accuracy (--patience), the best-validation state saved to

    {work_dir}/{m_name}/checkpoint/ckpt.pth      (our checkpoint format, metrics val_acc / test_acc)

plus `last.pth` (everything needed by --resume), `pretrain_log.csv` and `pretrain_curves.png` in the
same folder (utils/pretraining.py). The published cosine (T_max 200 with up to 1,000 epochs) restarts
the learning rate after epoch 200; ours anneals once over --epochs.
"""
import argparse

from utils import cli
from utils.hparams import DataHparams, RuntimeHparams, record
from utils.pretraining import PretrainHparams, run_pretraining


def get_args_parser():
    p = argparse.ArgumentParser("pretrain.py", description="Dense training (stage 1 of BRIDGE)")
    PretrainHparams.add_args(p)
    DataHparams.add_args(p)
    RuntimeHparams.add_args(p)
    return p


def main(args):
    hp, data, runtime = PretrainHparams.from_args(args), DataHparams.from_args(args), RuntimeHparams.from_args(args)
    arguments = record(args, hp, data, runtime)
    cli.print_args(arguments, "pretrain.py")
    return run_pretraining(hp, data, runtime, arguments)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
