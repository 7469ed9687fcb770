"""``-A``: which module holds the user's workflows, resolved as ``celery -A`` resolves it.

The current directory is importable (``flowkit run -A myapp.flows`` works from the
project's root, as ``celery -A myapp.flows worker`` does), ``FLOWKIT_APP`` sets the
default, and a module that cannot be imported is one line saying what to do, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from ..errors import WorkflowNotFound, described, raised_at
from .usage import CodeError, UsageError, quoted

#: The module the CLI imports when neither ``-A`` nor ``FLOWKIT_APP`` names one: the
#: reference deployment's Celery app (Procfile).
DEFAULT_APP = "workers.celery_app"


def add_app_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-A/--app`` to a command that needs the user's workflows."""
    parser.add_argument(
        "-A", "--app", default=None, metavar="MODULE",
        help=f"module that imports your workflows, as for celery -A "
             f"(default: $FLOWKIT_APP, else {DEFAULT_APP})",
    )


def app_module_name(args: argparse.Namespace) -> str:
    return getattr(args, "app", None) or os.environ.get("FLOWKIT_APP") or DEFAULT_APP


def load_app(args: argparse.Namespace) -> ModuleType:
    """Import the user's module (``module`` or ``module:attribute``, as celery takes it),
    then the modules its Celery app lists in ``imports=[...]``: all its workflows."""
    given = "" if getattr(args, "app", None) == "" else app_module_name(args)
    name, _, attribute = given.partition(":")
    _check_module_name(name, given)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as celery does: the project's root is importable
    try:
        module = importlib.import_module(name)
        from ..engine.broker import get_app

        get_app().loader.import_default_modules()
        if attribute and not hasattr(module, attribute):
            # a typo on the command line (its fixes are both there): dev waited for an edit
            raise UsageError(f"-A {given}: module {name!r} has no {attribute!r}; name the "
                             f"Celery app's variable, or pass -A {name} alone.")
        return module
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        if _names_it(exc.name, name) and given == DEFAULT_APP and not (
                getattr(args, "app", None) or os.environ.get("FLOWKIT_APP")):
            # the reference deployment's module, which the user never named: "run this
            # from your project's root" misled one who was there
            raise UsageError(
                f"no -A given and FLOWKIT_APP is not set (the default, {DEFAULT_APP}, is not "
                "here): pass -A your.module (the module of your workflows, as for celery -A), "
                "or export FLOWKIT_APP as flowkit dev prints it.") from None
        if _names_it(exc.name, name):
            raise UsageError(
                f"cannot import {name!r} (no module {exc.name!r} from {os.getcwd()}): run this "
                "from your project's root, or pass -A your.module (or set FLOWKIT_APP)."
            ) from None
        # not "then run this again": flowkit dev, which says it too, starts again by itself
        raise CodeError(f"importing {name!r} failed: {exc}{raised_at(exc)}; fix that "
                        "import.") from None
    except Exception as exc:  # the user's module itself raised while importing
        raise CodeError(f"importing {name!r} raised {described(exc)}") from None
    except SystemExit as exc:  # sys.exit() at import: it ended the command without a word
        raise CodeError(f"importing {name!r} called sys.exit({exc.code!r}); a module -A "
                         "imports must not exit (guard it with if __name__ == "
                         "'__main__':).") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a BaseException of the user's own, past Exception
        raise CodeError(f"importing {name!r} raised {described(exc)}") from None


def _check_module_name(name: str, given: str = "") -> None:
    """``-A`` names a module as Python imports it: a path or a file name is said so."""
    if not name and given:  # `-A :app`
        raise UsageError(f"-A {given!r} names no module before the ':': give it as "
                         "-A myapp.flows:app (or -A myapp.flows).")
    if not name:
        raise UsageError("-A is empty: name the module that imports your workflows, e.g. "
                         "-A myapp.flows (or leave -A out for FLOWKIT_APP).")
    if name.endswith(".py") or "/" in name or "\\" in name:
        dotted = name.removesuffix(".py").strip("./").replace("/", ".").replace("\\", ".")
        raise UsageError(f"-A {name!r}: -A takes a module name as Python imports it, not a "
                         f"file path: -A {dotted}, run from the directory it is under.")
    if name.startswith("."):
        raise UsageError(f"-A {name!r}: -A takes an absolute module name (no leading dot), "
                         "e.g. -A myapp.flows.")


def unknown_workflow(args: argparse.Namespace, name: str) -> WorkflowNotFound:
    """The error for a workflow ``-A``'s module does not have: the ones it has, and where
    they come from."""
    from ..workflow import did_you_mean, workflows

    names = sorted(workflows())
    known = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else
                                     "" if names else "none")
    return WorkflowNotFound(
        f"No workflow named {quoted(name)} (in {app_module_name(args)}: {known})."
        f"{did_you_mean(name, names) if len(name) <= 100 else ''} Check the name, or pass -A/--app with the module that "
        "imports your workflows.")


def _names_it(missing: str | None, name: str) -> bool:
    """Whether the module found missing is ``name`` or a package of it (the -A is wrong),
    not another one it imports: a prefix of the name (``langchain`` inside
    ``langchain_flows``) was taken for a wrong -A, "run this from your project's root"."""
    return bool(missing) and (name == missing or name.startswith(missing + "."))


#: A task every flowkit Celery app registers: an app without it is no flowkit app.
FLOWKIT_TASK = "flowkit.reaper"


def require_flowkit_app(args: argparse.Namespace) -> None:
    """CodeError when the module -A names (loaded) made no flowkit Celery app: its worker
    would consume nothing of flowkit's. A code fix, so ``flowkit dev`` waits for it (it
    started everything, then gave up)."""
    from ..engine.broker import get_app

    if FLOWKIT_TASK not in get_app().tasks:
        name = app_module_name(args)
        raise CodeError(f"{name} makes no flowkit Celery app; add "
                        f"app = flowkit.create_celery_app(\"{name.split('.')[0]}\", "
                        f"imports=[\"{name.split(':')[0]}\"]) to it.")
