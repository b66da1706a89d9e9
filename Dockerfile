# alicom-receipts: a small non-root image, the wheel installed into a slim Python base.
# One process per container: the command picks it (worker --queue TYPE, push-server,
# push-worker, reconcile, sandbox). Configuration: a TOML file mounted at
# /etc/alicom-receipts/alicom-receipts.toml plus ALICOM_RECEIPTS_<SECTION>_<KEY> variables;
# the AccessKey from ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET (a Secret) or RRSA/OIDC
# (ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN, ALIBABA_CLOUD_OIDC_TOKEN_FILE,
# which alibabacloud-credentials reads). SIGTERM drains within worker.shutdown_budget_s
# (20 s by default: inside Kubernetes' 30 s grace period).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY alicom_sandbox ./alicom_sandbox
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/alicom-receipts/bin:$PATH \
    ALICOM_RECEIPTS_CONFIG=/etc/alicom-receipts/alicom-receipts.toml
COPY --from=build /wheels /wheels
RUN python -m venv /opt/alicom-receipts \
    && /opt/alicom-receipts/bin/pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin alicom
COPY config/alicom-receipts.example.toml /etc/alicom-receipts/alicom-receipts.example.toml
USER 10001:10001
WORKDIR /tmp
STOPSIGNAL SIGTERM
ENTRYPOINT ["alicom-receipts"]
CMD ["worker", "--queue", "SmsReport"]
