"""Base classes shared by the stage modules: fingerprints, completion records, per-task logs.

Fingerprints. A stage's fingerprint hashes the stage's name and algorithm version, the config
values the stage reads (`stage_parameters`), and the fingerprints of the stages it reads from
(`upstream`). The first stage also records the identity of the input datasets (path, key, shape,
dtype). A (stage, block) fingerprint adds the block id. So changing a parameter makes exactly that
stage and everything downstream of it stale, and nothing upstream; re-running an unchanged config
is a no-op. Input *content* is not hashed: overwriting an input in place is not detected.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from typing import Any, ClassVar

import luigi

from emflow.targets import CompletionTarget, atomic_write_text, fingerprint

from .context import RunContext, load_context


class EmflowTask(luigi.Task):
    """A task of one run, identified by its config file (and, for block tasks, a block id)."""

    config_path = luigi.Parameter()

    stage: ClassVar[str]
    version: ClassVar[int] = 1
    upstream: ClassVar[tuple[type["EmflowTask"], ...]] = ()

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict[str, Any]:
        """The config values this stage's result depends on."""
        return {}

    @property
    def context(self) -> RunContext:
        return load_context(self.config_path)

    @property
    def block_key(self) -> int | None:
        return None

    def stage_fingerprint(self) -> str:
        return stage_fingerprint(type(self), self.config_path)

    def requires(self):
        return [upstream_done(stage, self.config_path) for stage in self.upstream]

    def output(self) -> CompletionTarget:
        expected = fingerprint([self.stage_fingerprint(), self.block_key])
        return CompletionTarget(self.context.record_path(self.stage, self.block_key), expected)

    def run(self) -> None:
        context = self.context
        log_path = context.log_path(self.stage, self.block_key)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logger = logging.getLogger(f"emflow.{self.stage}.{self.block_key}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        handler = logging.FileHandler(log_path, mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        failure_path = context.failure_path(self.stage, self.block_key)
        started = time.perf_counter()
        try:
            logger.info("start %s block %s", self.stage, self.block_key)
            result = self.run_stage(logger) or {}
            logger.info("done in %.2f s: %s", time.perf_counter() - started, result)
        except BaseException as error:
            logger.error("failed:\n%s", traceback.format_exc())
            record = {"stage": self.stage, "block_id": self.block_key, "error": f"{type(error).__name__}: {error}", "log": str(log_path)}
            atomic_write_text(failure_path, json.dumps(record))
            raise
        finally:
            logger.removeHandler(handler)
            handler.close()
        failure_path.unlink(missing_ok=True)
        self.output().write(result)

    def run_stage(self, logger: logging.Logger) -> dict[str, Any] | None:
        """Compute and write this task's result; return a small JSON-able summary."""
        raise NotImplementedError


class GlobalTask(EmflowTask):
    """A stage that is global by nature (one task for the whole volume)."""


class BlockTask(EmflowTask):
    """One block of a block-wise stage."""

    block_id = luigi.IntParameter()

    @property
    def block_key(self) -> int:
        return self.block_id


class BlocksDone(luigi.WrapperTask):
    """All blocks of one block-wise stage: the barrier the next stage waits for.

    Block tasks depend on this one task instead of on each upstream block, so the dependency
    graph has O(number of blocks) edges rather than O(number of blocks squared).
    """

    config_path = luigi.Parameter()
    stage = luigi.Parameter()

    def requires(self):
        task_class = BLOCK_STAGES[self.stage]
        number_of_blocks = load_context(self.config_path).blocking.number_of_blocks
        return [task_class(config_path=self.config_path, block_id=block_id) for block_id in range(number_of_blocks)]


BLOCK_STAGES: dict[str, type[BlockTask]] = {}


def register_block_stage(task_class: type[BlockTask]) -> type[BlockTask]:
    BLOCK_STAGES[task_class.stage] = task_class
    return task_class


def upstream_done(task_class: type[EmflowTask], config_path: str) -> luigi.Task:
    if issubclass(task_class, BlockTask):
        return BlocksDone(config_path=config_path, stage=task_class.stage)
    return task_class(config_path=config_path)


def stage_fingerprint(task_class: type[EmflowTask], config_path: str) -> str:
    return _stage_fingerprint(task_class, load_context(config_path))


@functools.lru_cache(maxsize=256)
def _stage_fingerprint(task_class: type[EmflowTask], context: RunContext) -> str:
    return fingerprint(
        {
            "stage": task_class.stage,
            "version": task_class.version,
            "parameters": task_class.stage_parameters(context),
            "upstream": [_stage_fingerprint(upstream, context) for upstream in task_class.upstream],
        }
    )
