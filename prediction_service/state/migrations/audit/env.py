from prediction_service.state.migrations.env_common import run

run("audit")
