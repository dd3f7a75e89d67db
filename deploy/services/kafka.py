"""Apache Kafka 4.x, one node in KRaft mode (broker and controller in one process), jars from Maven Central."""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from deploy.download import fetch_maven_dependencies
from deploy.process import LaunchSpec, port_open
from deploy.services import Service, java_home

# Kafka's code logs through SLF4J 1.x; this binding routes it to Log4j 2, configured by LOG4J_CONFIG.
LOG4J_VERSION = "2.24.3"
LOG4J_CONFIG = """\
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.version.name = org.apache.kafka.common.utils.AppInfoParser
logger.version.level = info
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""
VERSION_LINE = re.compile(r"Kafka version: (\S+)")


# What every one-node KRaft cluster needs: every internal topic can only have one replica, and consumers of a fresh
# group start right away instead of waiting for more members.
SINGLE_NODE_PROPERTIES = (
    "offsets.topic.replication.factor=1",
    "transaction.state.log.replication.factor=1",
    "transaction.state.log.min.isr=1",
    "share.coordinator.state.topic.replication.factor=1",
    "share.coordinator.state.topic.min.isr=1",
    "group.initial.rebalance.delay.ms=0",
)


class Kafka(Service):
    name = "kafka"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"

    @property
    def libs(self) -> Path:
        return self.home / self.settings.kafka_version / "libs"

    @property
    def config_path(self) -> Path:
        return self.home / "config" / "server.properties"

    def prepare(self) -> None:
        s = self.settings
        fetch_maven_dependencies(
            [
                f"org.apache.kafka:kafka_2.13:{s.kafka_version}",
                f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
            ],
            project_dir=self.home / s.kafka_version,
            libs_dir=self.libs,
            local_repo=s.home / "downloads" / "m2",
            repo_url=s.maven_repo_url,
        )
        data_dir = self.home / "data"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        (self.home / "config" / "log4j2.properties").write_text(LOG4J_CONFIG)
        self.config_path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@localhost:{s.kafka_controller_port}",
                    f"listeners=PLAINTEXT://localhost:{s.kafka_port},CONTROLLER://localhost:{s.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://localhost:{s.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data_dir}",
                    "auto.create.topics.enable=true",
                    "num.partitions=1",
                    *SINGLE_NODE_PROPERTIES,
                    "",
                ]
            )
        )
        if not (data_dir / "meta.properties").exists():
            self._format_storage()

    def _format_storage(self) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # One argument: an id may start with "-", which argparse would read as an option.
        command = [
            *self._java(),
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(self.config_path),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")

    def _java(self) -> list[str]:
        return [
            str(java_home(self.settings) / "bin" / "java"),
            f"-Xms{self.settings.kafka_heap}",
            f"-Xmx{self.settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'config' / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
        ]

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(argv=[*self._java(), "kafka.Kafka", str(self.config_path)], cwd=self.home)

    async def probe(self) -> str | None:
        if not port_open(self.port):
            return None
        admin = AIOKafkaAdminClient(bootstrap_servers=self.endpoint, request_timeout_ms=3000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
        except Exception:  # noqa: BLE001 — a probe: any client failure means "not ready yet"
            return None
        finally:
            await admin.close()
        if not cluster.get("brokers"):
            return None
        return self.version()

    def version(self) -> str:
        """Kafka's wire protocol does not carry the server version; the broker logs it at start."""
        try:
            found = VERSION_LINE.findall(self.log_path.read_text(errors="replace"))
        except OSError:
            found = []
        return found[-1] if found else "unknown"
