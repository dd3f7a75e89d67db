"""Settings → Kafka and Elasticsearch client options: what a secured cluster needs reaches every kind of client."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping

import certifi
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from postlens.io.connections import es_client, faust_broker_options, kafka_client_options
from postlens.settings import Settings

SECURITY_KEYS = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")


def settings(**fields: object) -> Settings:
    return Settings(_env_file=None, **fields)


def test_plaintext_by_default() -> None:
    options = kafka_client_options(settings(kafka_bootstrap="a:9092,b:9092"))
    assert options == {"bootstrap_servers": "a:9092,b:9092", "security_protocol": "PLAINTEXT"}
    assert faust_broker_options(settings(kafka_bootstrap="a:9092, b:9092")) == {
        "broker": ["kafka://a:9092", "kafka://b:9092"],
        "broker_credentials": None,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
async def test_sasl_reaches_aiokafka_clients_and_faust_alike(protocol: str, mechanism: str) -> None:
    secured = settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
        kafka_ssl_cafile=certifi.where(),
    )
    options = kafka_client_options(secured)
    assert (options["security_protocol"], options["sasl_mechanism"]) == (protocol, mechanism)
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "pw")
    assert isinstance(options.get("ssl_context"), ssl.SSLContext) == (protocol == "SASL_SSL")
    # aiokafka accepts them (a wrong keyword would raise here), and Faust hands its own clients the same security.
    for client in (AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient):
        client(**options)
    faust_auth = credentials_to_aiokafka_auth(faust_broker_options(secured)["broker_credentials"])
    assert {key: faust_auth[key] for key in SECURITY_KEYS} == {key: options[key] for key in SECURITY_KEYS}


def test_tls_without_sasl_verifies_brokers_against_the_ca() -> None:
    secured = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where())
    context = kafka_client_options(secured)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
    assert (
        credentials_to_aiokafka_auth(faust_broker_options(secured)["broker_credentials"])["security_protocol"] == "SSL"
    )


def test_sasl_without_credentials_is_refused_without_echoing_the_settings() -> None:
    with pytest.raises(ValidationError) as refused:
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="do-not-print", es_password="nor-this")
    assert "kafka_sasl_username" in str(refused.value)
    assert "do-not-print" not in str(refused.value) and "nor-this" not in str(refused.value)


def default_headers(client: AsyncElasticsearch) -> Mapping[str, str]:
    # elasticsearch-py keeps the headers it sends with every request only in this private attribute.
    return client._headers  # noqa: SLF001


def test_elasticsearch_api_key_basic_auth_and_ca() -> None:
    with_key = es_client(settings(es_url="https://es:9200", es_api_key="aWQ6a2V5", es_ca_certs=certifi.where()))
    assert default_headers(with_key)["authorization"] == "ApiKey aWQ6a2V5"
    (node,) = with_key.transport.node_pool.all()
    assert node.config.ca_certs == certifi.where()
    with_user = es_client(settings(es_username="elastic", es_password="pw"))
    assert default_headers(with_user)["authorization"] == "Basic " + base64.b64encode(b"elastic:pw").decode()
    assert "authorization" not in default_headers(es_client(settings()))
    with pytest.raises(ValidationError):
        settings(es_api_key="k", es_username="elastic", es_password="pw")


def test_secrets_do_not_show_in_the_settings_text() -> None:
    secured = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password="kafka-pw",
        es_api_key="es-key",
    )
    assert "kafka-pw" not in f"{secured!r} {secured}" and "es-key" not in f"{secured!r} {secured}"
    assert "kafka-pw" not in repr(faust_broker_options(secured))
