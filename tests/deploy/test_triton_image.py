"""The Triton image on the Debian base (deploy/docker/triton-cpu.Dockerfile: the server from the nvidia-pytriton
wheel, `make images` builds it) serves an exported model on CPU and answers posts as the version folder does in
process (postlens.runtime.exported).

The container runs its own command (poll mode on /models) on the host's network, on free ports, with the session's
exported tiny model as its repository. Posts go one at a time, each compared with the same post alone in process: an
int8 version's dynamically quantized activations depend on what a post is batched with, one post's answer does not.
Needs root and podman (marker `images`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy.process import free_port
from postlens.runtime.exported import ExportedModel, version_precision
from postlens.runtime.images import stack_images
from postlens.schemas import ModelRef, Post, PostPrediction
from postlens.settings import Settings
from stream.stages.infer import InferenceUnavailable, InferOutcome, TritonInferer
from tests.deploy.containers import IMAGE_UID, built_image, logs, podman, running
from tests.model_repository.test_postlens_model import requests_for
from trainer.predict import read_posts

pytestmark = [pytest.mark.images, pytest.mark.integration]

START_TIMEOUT_S = 300.0  # the container's start and the model's load, on a loaded machine


async def served_by_the_image(exported_repo: Path, posts: list[Post], work: Path) -> list[InferOutcome]:
    """What the Triton image answers for ``posts``, serving a copy of ``exported_repo`` owned by the images' user."""
    image = built_image("triton-cpu")
    repo = Path(shutil.copytree(exported_repo, work / "models"))
    for path in [repo, *repo.rglob("*")]:
        shutil.chown(path, IMAGE_UID, IMAGE_UID)
    command = json.loads(podman("image", "inspect", "--format", "{{json .Config.Cmd}}", image).stdout)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    ports = [f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}"]
    settings = Settings(triton_url=f"localhost:{grpc_port}", triton_timeout_s=START_TIMEOUT_S)
    with running(image, [*command, *ports], volumes=[f"{repo}:/models:ro"]) as name:
        try:
            inferer = await TritonInferer.connect(settings)
        except InferenceUnavailable as error:
            pytest.fail(f"{error}\ncontainer log:\n{logs(name)}", pytrace=False)
        try:
            return [
                outcome for post in posts for outcome in await inferer.infer(requests_for([post], inferer.image_size))
            ]
        finally:
            await inferer.close()


def predicted_in_process(exported_repo: Path, posts: list[Post]) -> list[PostPrediction]:
    """What the newest version of the entry model predicts for each post alone, in this process, at the precision it
    serves."""
    version = max((p for p in (exported_repo / "postlens").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model = ExportedModel.load(
        version, ModelRef(name="postlens", version=version.name), precision=version_precision(version, "fp32")
    )
    predictions = []
    for post in posts:
        (request,) = requests_for([post], model.image_size)
        images, mask = stack_images([request.images], model.image_size)
        predictions += model.predict([post.text], images, mask)
    return predictions


def assert_image_answers_as_in_process(exported_repo: Path, posts: list[Post], served: list[InferOutcome]) -> None:
    """The same entities, confidences, regions and scores, to the bit."""
    expected = predicted_in_process(exported_repo, posts)
    assert any(prediction.entities for prediction in expected), "the model predicts nothing; parity would be vacuous"
    for post, want, got in zip(posts, expected, served, strict=True):
        assert isinstance(got, PostPrediction), f"post {post.id}: {got}"
        assert got == want, f"post {post.id} ({post.text!r}, {len(post.images)} images)"


async def test_the_triton_image_answers_as_the_version_does_in_process(
    exported_repo: Path, model_data: Path, tmp_path: Path
) -> None:
    posts = read_posts(model_data / "test.jsonl")
    posts = [post for count in range(3) for post in [p for p in posts if min(len(p.images), 2) == count][:4]]
    assert {min(len(post.images), 2) for post in posts} == {0, 1, 2}, "posts without, with one, with more images"
    served = await served_by_the_image(exported_repo, posts, tmp_path)
    assert_image_answers_as_in_process(exported_repo, posts, served)
