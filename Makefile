# The two commands of the README: `make run` (a station with a demo fleet on the embedded default)
# and `make test` (the whole suite on SQLite and PostgreSQL). Both install what they need first.

VENV      := .venv
MQTT_URL  ?= $(or $(WAYSTATION_MQTT_URL),embedded://127.0.0.1:1883)
HTTP_PORT ?= $(or $(WAYSTATION_HTTP_PORT),8080)
DATA_DIR  ?= $(or $(WAYSTATION_DATA_DIR),./var)

.PHONY: run start install test lint format bench-devices clean web-dev

install:
	@scripts/bootstrap.sh

run: install
	WAYSTATION_MQTT_URL=$(MQTT_URL) WAYSTATION_HTTP_PORT=$(HTTP_PORT) WAYSTATION_DATA_DIR=$(DATA_DIR) \
		$(VENV)/bin/waystation run --demo

start: install
	WAYSTATION_MQTT_URL=$(MQTT_URL) WAYSTATION_HTTP_PORT=$(HTTP_PORT) WAYSTATION_DATA_DIR=$(DATA_DIR) \
		$(VENV)/bin/waystation run

test:
	@scripts/test.sh

lint: install
	$(VENV)/bin/ruff check src tests bench migrations scripts
	$(VENV)/bin/ruff format --check src tests bench migrations scripts
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix src tests bench migrations scripts
	$(VENV)/bin/ruff format src tests bench migrations scripts

# The web UI with hot reload on :5173, proxying the API to a station started with `make run` (docs/ui.md).
web-dev: install
	cd web && npm run dev

bench-devices: install
	$(VENV)/bin/python bench/devices.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
