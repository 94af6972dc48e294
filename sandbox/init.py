"""Copy the configs that ship with the sandbox into a folder (default ./configs), so that an install
without the repository (pip install .) has them to start from:

    sandbox-init                     # -> ./configs/unet_dice.yaml, ./configs/studies/models.yaml, ...
    sandbox-init my_configs          # another folder
    sandbox-train --config configs/unet_dice.yaml

A config there that you edited is never overwritten (one line names it) unless --force.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import cli_entry, setup_cli  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("dir", nargs="?", default="configs", help="where to copy them (default ./configs)")
    parser.add_argument("--force", action="store_true", help="overwrite configs there that differ")
    args = parser.parse_args()
    from sandbox.config.packaged import config_files, configs_dir, copy_configs
    from sandbox.invocation import command

    src = configs_dir()
    written = copy_configs(args.dir, args.force)
    n = len(config_files(src))
    if Path(args.dir).resolve() == src.resolve():
        print(f"{args.dir} is where the packaged configs are ({n} files): nothing to copy")
    else:
        kept = f" ({n - len(written)} already there, identical)" if len(written) < n else ""
        print(f"{len(written)} of {n} configs written to {args.dir}{kept}; "
              f"e.g. {command('train')} --config {Path(args.dir) / 'unet_dice.yaml'}")


if __name__ == "__main__":
    main()
