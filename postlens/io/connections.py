"""Kafka and Elasticsearch clients' connection options from settings: SASL, TLS and credentials in one place.

Every aiokafka client, the workers' Faust app and every Elasticsearch client take their options from here, so a
secured cluster needs settings only. Secrets leave their ``SecretStr`` only here, straight into the client.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from postlens.settings import Settings

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Verifies the brokers (and their host names) against ``kafka_ssl_cafile``, or the system CAs without one."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    return ssl.create_default_context(cafile=cafile)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # Settings refuses SASL without credentials
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            # aiokafka takes SCRAM credentials under the same names as PLAIN ones.
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    return options


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: the brokers and the same security as :func:`kafka_client_options`."""
    # The worker extra has Faust; the trainer's install (aiokafka clients only) does not.
    from faust.auth import Credentials, SASLCredentials, SSLCredentials

    brokers = [f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",") if server.strip()]
    context = kafka_ssl_context(settings)
    credentials: Credentials | None = None
    if settings.kafka_security_protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # Settings refuses SASL without credentials
        # Faust picks SASL_SSL when given a context and SASL_PLAINTEXT without one.
        credentials = SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif context is not None:
        credentials = SSLCredentials(context)
    return {"broker": brokers, "broker_credentials": credentials}


def es_client(settings: Settings) -> AsyncElasticsearch:
    """An Elasticsearch client with the configured API key or user and password, and CA bundle.

    No client-side retries: callers retry outages themselves (postlens.io.retry), with backoff and without giving up.
    """
    from elasticsearch import AsyncElasticsearch  # only the worker extra has it

    options: dict[str, Any] = {}
    if settings.es_api_key is not None:
        options["api_key"] = settings.es_api_key.get_secret_value()
    elif settings.es_username and settings.es_password is not None:
        options["basic_auth"] = (settings.es_username, settings.es_password.get_secret_value())
    if settings.es_ca_certs is not None:
        options["ca_certs"] = str(settings.es_ca_certs)
    return AsyncElasticsearch(settings.es_url, request_timeout=settings.es_request_timeout_s, max_retries=0, **options)
