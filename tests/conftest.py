import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` on a free loopback port for the whole session (~10 s start)."""
    from mlflow_server import server

    project_dir = tmp_path_factory.mktemp("mlflow_server")
    info = server.start(project_dir)
    yield info
    server.stop(project_dir)
