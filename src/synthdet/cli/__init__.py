"""``synthdet`` command line: a thin layer over the library (no logic here that the library lacks).

Commands live one group per module and are imported only when run, so ``synthdet --help`` loads neither torch nor
pandas. Every command reports the library's input errors (missing files, folders that are not detectors, bad
values) as one ``error:`` line on stderr, never a traceback (``SYNTHDET_DEBUG=1`` shows it).

Exit codes: 0 success; 1 the command ran but produced nothing usable (no image could be scored, a checked
submission has errors); 2 usage or input error (bad option, missing file, not a detector, empty folder).
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from synthdet.cli._io import INPUT_ERRORS, fail, one_line
from synthdet.extras import EXTRAS, missing_extra
from synthdet.version import __version__

#: Every command: name → (module in this package, attribute, one-line help shown by ``synthdet --help``).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("data", "app", "Build and split dataset manifests."),
    "weights": ("backbones", "weights_app", "Backbone weights: fetch into the Hugging Face cache."),
    "backbones": ("backbones", "backbones", "List every registered backbone and whether its weights are here."),
    "extract": ("train", "extract", "Run a backbone over a dataset once; features go to the on-disk cache."),
    "train": ("train", "train", "index → extract → split → fit → calibrate → evaluate → save, on your own data."),
    "predict": ("predict", "predict", "Score images: a verdict for one file, a CSV for several."),
    "demo": ("train", "demo", "Train and evaluate a detector offline on the data shipped in the package."),
    "export": ("export", "export", "Export a detector as one ONNX graph (onnxruntime, other runtimes)."),
    "submit": ("submit", "submit", "Write a MediaEval Task A CSV for a test folder and validate it, or only "
               "validate (--check)."),
    "recipes": ("recipes", "app", "Named configs reproducing every system of the working notes."),
    "cv": ("cv", "cv_command", "Stratified k-fold cross-validation of a head on cached features."),
    "ensemble": ("ensemble", "ensemble_command", "Combine saved detectors into one calibrated detector."),
    "evaluate": ("evaluate", "evaluate", "Task A metrics with bootstrap CIs, per generator and under robustness "
                 "slices; a run folder and an HTML report."),
    "report": ("evaluate", "report", "One self-contained HTML report comparing several evaluation runs."),
    "finetune": ("finetune", "finetune_command", "Fine-tune a backbone with a head from images (resumable)."),
    "localize": ("localize", "app", "Task B: train, run and evaluate manipulation localizers."),
    "augment-preview": ("augment", "augment_preview", "Show every augmentation preset on one image, as a PNG."),
    "serve": ("serve", "serve", "A REST API and web page: a verdict in words, stability checks, evidence."),
}


class LazyGroup(TyperGroup):
    """Lists commands from :data:`COMMANDS` and imports one only when it runs (or its own help is asked for)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr, _ = COMMANDS[cmd_name]
            try:
                obj = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
            except ModuleNotFoundError as e:  # a command whose module needs an extra: name it, with the command
                if (e.name or "").split(".")[0] not in EXTRAS or os.environ.get("SYNTHDET_DEBUG"):
                    raise
                raise missing_extra(e, f"synthdet {cmd_name}") from None
            if isinstance(obj, typer.Typer):
                self.commands[cmd_name] = typer.main.get_group(obj)
            else:
                single = typer.Typer(add_completion=False, rich_markup_mode=None)
                single.command(cmd_name)(obj)
                self.commands[cmd_name] = typer.main.get_command(single)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The static one-line helps: listing commands must not import them."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])

    def invoke(self, ctx: Any) -> Any:
        """The one place where the library's input errors, and a missing extra, become a one-line message and exit
        code 2."""
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:  # the scoring install has no torch: name the extra that brings it
            if os.environ.get("SYNTHDET_DEBUG") or (e.name or "").split(".")[0] not in EXTRAS:
                raise
            raise fail(one_line(missing_extra(e, f"synthdet {ctx.invoked_subcommand or ''}".strip()))) from None
        except INPUT_ERRORS as e:
            if os.environ.get("SYNTHDET_DEBUG"):
                raise
            raise fail(one_line(e)) from None


app = typer.Typer(cls=LazyGroup, help="Tell real photographs from AI-generated images.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None,
                  epilog="Exit codes: 0 ok; 1 nothing usable produced (e.g. no image could be scored); "
                         "2 usage or input error.")


def _print_version(value: bool) -> None:
    if value:
        print(f"synthdet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Tell real photographs from AI-generated images."""


def main() -> None:  # pragma: no cover - console entry
    app()
