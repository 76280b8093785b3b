"""%mvc_publish: a chosen version reaches an MLflow registry or a DVC artifact."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..core.publication import TARGETS
from .session import MVCSession, parse_line, user_errors


@magics_class
class PublishMagics(Magics):
    """Publish versions where a team deploys from (MLflow, DVC)."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    @magic_arguments()
    @argument("ref", help="the version (tag, id prefix, best:METRIC...)")
    @argument("target", help=f"where to: {' or '.join(TARGETS)}")
    @argument("destination", help="mlflow: the registered model NAME; dvc: the artifact folder PATH")
    @argument("--alias", default=None, help="mlflow: the registry alias to point at the version (e.g. champion)")
    @argument("--artifact", default=None, metavar="NAME",
              help="dvc: the artifact name in dvc.yaml (default: the model's name)")
    @argument("--model", default=None, help="the model whose history the ref is in")
    @argument("--unsafe", action="store_true",
              help="allow rebuilding a model whose class is your code (defined in the notebook or imported)")
    @user_errors
    def mvc_publish(self, line: str):
        """Publish a version to MLflow or DVC, and say how to load it back there.

        ``%mvc_publish best:val_acc mlflow digits --alias champion`` logs the version with its framework's
        MLflow flavor and registers it as a version of ``digits`` (tracking URI: ``MLFLOW_TRACKING_URI``).
        ``%mvc_publish production dvc models/digits --artifact digits`` writes it under ``models/digits``
        of the git + DVC repository, tracks it with DVC and declares it in ``dvc.yaml``; commit, then
        ``gto register digits``. Publishing the same version again finds what was published.
        """
        args = parse_line(self.mvc_publish, line)
        target = args.target.lower()
        if target == "mlflow" and args.artifact:
            raise UsageError("--artifact is for dvc; mlflow takes --alias")
        if target == "dvc" and args.alias:
            raise UsageError("--alias is for mlflow; dvc takes --artifact")
        repo = self.session.repo
        version = repo.resolve(args.ref, name=self.session.model_for_ref(args.model, args.ref))
        options = ({"registered_model_name": args.destination, "alias": args.alias} if target == "mlflow"
                   else {"path": args.destination, "artifact": args.artifact})
        result = repo.publish(version.id, target, name=version.name, **options, **self.session.trust(args.unsafe))
        print(result)
        return None
