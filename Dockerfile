# Two stages: build a wheel, then install it alone on a slim base and run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="commercetools-payment-connector" \
      org.opencontainers.image.description="Asynchronous commercetools payment connector"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home connector
USER 10001
ENTRYPOINT ["connector"]
CMD ["run"]
