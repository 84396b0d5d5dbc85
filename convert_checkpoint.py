"""Rewrite checkpoints (e.g. the published formats) in this project's format, tensors unchanged.

    python convert_checkpoint.py --model_path published/resnet20 --out_dir converted --m_name resnet20
    python convert_checkpoint.py --model_path best_ep1_rwd+0.01.pth --out_dir converted --m_name resnet20 --trust_pickle

Writes {out_dir}/{name}.pth for each .pth file of --model_path (a file, or a folder searched
recursively): a weights_only dict with the model name, dataset, stage, sparsity and metrics the source
recorded, plus `source` and `source_format`. Sources are never modified.
(`test_unstructure_regrowth_model.py --convert OUT_DIR` does the same.)
"""
import argparse

from utils import cli, paths
from utils.conversion import convert_checkpoints


def get_args_parser():
    p = argparse.ArgumentParser("convert_checkpoint.py", description="Rewrite checkpoints in this project's format")
    p.add_argument("--model_path", required=True, help="a checkpoint file, or a folder searched recursively")
    p.add_argument("--out_dir", required=True, help="where the converted files go")
    p.add_argument("--m_name", default=None, help="model name, for files that do not record it")
    p.add_argument("--dataset", default="CIFAR10", help="data set recorded for files that do not record theirs")
    p.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    return p


def main(args):
    cli.print_args(args, "convert_checkpoint.py")
    return convert_checkpoints(paths.checkpoint_files(args.model_path), args.out_dir, args.m_name, args.dataset,
                               args.trust_pickle)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
