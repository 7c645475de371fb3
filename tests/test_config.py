"""Settings: every REVIEWS_* variable checked once, with its range, in one line that names it."""

import pytest
from click.testing import CliRunner

from cli.main import main
from worker.config import LIMITS, Settings, SettingsError


@pytest.mark.parametrize("name, value, expected", [
    ("REVIEWS_BATCH_SIZE", "0", "REVIEWS_BATCH_SIZE=0: must be a number from 1 to 10000"),
    ("REVIEWS_BATCH_SIZE", "-5", "must be a number from 1"),
    ("REVIEWS_BATCH_SIZE", "many", "REVIEWS_BATCH_SIZE='many' is not a valid int"),
    ("REVIEWS_RETRY_DELAY", "nan", "REVIEWS_RETRY_DELAY=nan: must be a number"),
    ("REVIEWS_MAX_LINE_BYTES", "1", "REVIEWS_MAX_LINE_BYTES=1: must be a number from 64"),
    ("REVIEWS_PRECISION", "int4", "REVIEWS_PRECISION='int4': must be one of auto, fp32, bf16, fp16, int8"),
    ("REVIEWS_DEVICE", "tpu", "must be one of auto, cpu, cuda"),
    ("REVIEWS_WINDOW_STRIDE", "600", "REVIEWS_WINDOW_STRIDE=600 must be smaller than REVIEWS_MAX_LENGTH - 2"),
    ("REVIEWS_RETRAIN_SCHEDULE", "nightly", "expected a cron line of 5 fields"),
    ("REVIEWS_DATABASE_URL", "notaurl", "is not a database URL"),
    ("REVIEWS_DATABASE_URL", "postgres://u@h/db", "write postgresql+psycopg:// instead of postgres://"),
    ("REVIEWS_DATABASE_URL", "mysql://u:pw@h/db", "mysql is not supported"),
    ("REVIEWS_BROKER_URL", "localhost", "REVIEWS_BROKER_URL='localhost': expected a URL"),
])
def test_a_bad_setting_is_one_line_naming_it(name, value, expected):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert expected in str(info.value) and "\n" not in str(info.value)
    # The same line from any command, with exit code 1 and no traceback, before anything runs.
    result = CliRunner().invoke(main, ["jobs"], env={name: value})
    assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output


def test_a_bad_database_url_flag_is_one_line_too():
    result = CliRunner().invoke(main, ["--database-url", "notaurl", "db", "upgrade"])
    assert result.exit_code == 1 and "is not a database URL" in result.output
    result = CliRunner().invoke(main, ["--database-url", "mysql://root:s3cret@h/db", "db", "upgrade"])
    assert result.exit_code == 1 and "mysql is not supported" in result.output and "s3cret" not in result.output


def test_every_limit_names_a_field_and_the_defaults_pass():
    fields = set(Settings.__dataclass_fields__)
    assert set(LIMITS) <= fields
    Settings()  # the defaults are inside every range


def test_engine_options_carry_every_engine_setting():
    s = Settings(max_review_chars=500, window_stride=32, max_length=128, token_budget=4096, precision="fp32")
    o = s.engine_options()
    assert (o.max_chars, o.stride, o.max_length, o.token_budget, o.precision) == (500, 32, 128, 4096, "fp32")
