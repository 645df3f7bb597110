"""The SAM stack (template.yaml, samconfig.toml, docs/deploy.md): shape, least privilege, no inline secrets, lint-clean.

The template is read with its CloudFormation short tags turned into their long forms (`!Ref X` is `{"Ref": "X"}`,
`!GetAtt A.Arn` is `{"Fn::GetAtt": ["A", "Arn"]}`), so the tests can tell a reference from a literal.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from babychain.config import Settings
from babychain.local.lambda_shim import FUNCTIONS_DIR, ROUTES, load_handler

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# What the shared secret holds (one JSON object; docs/deploy.md shows it). None of these may appear in the template.
SECRET_KEYS = {
    "BABYCHAIN_API_KEY",
    "BABYCHAIN_CALLBACK_SECRET",
    "DATABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "BFL_API_KEY",
    "ARK_API_KEY",
    "BABYSEA_API_KEY",
    "BFL_WEBHOOK_SECRET",
    "BABYSEA_WEBHOOK_SECRET",
    "SENTRY_DSN",
    "UPSTASH_REDIS_REST_TOKEN",
}

# The environment every function gets from the template (the code reads these names).
COMMON_ENV = {
    "BABYCHAIN_PROVIDER_MODE": {"Ref": "ProviderMode"},
    "BABYCHAIN_STORE": {"Ref": "StoreKind"},
    "SUPABASE_URL": {"Ref": "SupabaseUrl"},
    "UPSTASH_REDIS_REST_URL": {"Ref": "UpstashRedisRestUrl"},
    "BABYCHAIN_RATE_LIMIT_PER_MINUTE": {"Ref": "RateLimitPerMinute"},
    "BFL_REGION": {"Ref": "BflRegion"},
    "BABYSEA_REGION": {"Ref": "BabySeaRegion"},
    "BABYCHAIN_SECRETS_ID": {"Ref": "SecretsId"},
    "BABYCHAIN_ARTIFACT_BUCKET": {"Ref": "ArtifactBucket"},
    "BABYCHAIN_ARTIFACT_URL_TTL_SECONDS": {"Ref": "ArtifactUrlTtlSeconds"},
    "BABYCHAIN_RETENTION_DAYS": {"Ref": "RetentionDays"},
    "BABYCHAIN_STEP_QUEUE_URL": {"Ref": "StepQueue"},
    "BABYCHAIN_CALLBACK_QUEUE_URL": {"Ref": "CallbackQueue"},
}
POWERTOOLS_ENV = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}

PARAMETERS = {
    "ProviderMode",
    "StoreKind",
    "SupabaseUrl",
    "UpstashRedisRestUrl",
    "RateLimitPerMinute",
    "SecretsId",
    "BflRegion",
    "BabySeaRegion",
    "LogRetentionDays",
    "RetentionDays",
    "ArtifactUrlTtlSeconds",
    "StepMaxConcurrency",
    "CallbackMaxConcurrency",
    "AlarmTopicArn",
}

# Least privilege, per function folder: the queues it sends to, the queue it consumes, its S3 actions on runs/*.
SENDS_TO = {
    "create_run": {"StepQueue"},
    "get_run": set(),
    "cancel_run": {"CallbackQueue"},
    "list": set(),
    "provider_webhook": {"StepQueue"},
    "step_executor": {"StepQueue", "CallbackQueue"},
    "sweeper": {"StepQueue", "CallbackQueue"},
    "callback_sender": {"CallbackQueue"},
}
CONSUMES = {"step_executor": "StepQueue", "callback_sender": "CallbackQueue"}
# Every function that returns or sends a run resource presigns its output URLs, which needs s3:GetObject.
S3_ACTIONS = {
    "create_run": {"s3:GetObject"},
    "get_run": {"s3:GetObject"},
    "cancel_run": {"s3:GetObject"},
    "list": {"s3:GetObject"},
    "provider_webhook": set(),
    "step_executor": {"s3:PutObject", "s3:GetObject"},
    "sweeper": set(),
    "callback_sender": {"s3:GetObject"},
}
# A secret's ARN is its name, "-" and six random characters.
SECRET_ARN_FROM_NAME = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretsId}-??????"
)
RUNS_PREFIX = {"Fn::Sub": "${ArtifactBucket.Arn}/runs/*"}
# The only actions AWS cannot scope to a resource among those the functions use.
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
SQS_CONSUMER_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short tags as their long forms."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


@functools.cache
def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in _template()["Resources"].items() if r["Type"] == kind}


def _functions() -> dict[str, dict[str, Any]]:
    """Function properties with Globals.Function applied (environment variables merged), by function folder."""
    defaults = _template()["Globals"]["Function"]
    functions = {}
    for name, resource in _resources("AWS::Serverless::Function").items():
        own = resource["Properties"]
        props = {**defaults, **own, "LogicalId": name, "Metadata": resource.get("Metadata", {})}
        props["Environment"] = {
            "Variables": {
                **defaults.get("Environment", {}).get("Variables", {}),
                **own.get("Environment", {}).get("Variables", {}),
            }
        }
        functions[Path(own["CodeUri"].rstrip("/")).name] = props
    return functions


def _ref(value: Any) -> str:
    """The logical id a Ref or GetAtt points at."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    raise AssertionError(f"not a reference: {value!r}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IAM statement of a function's role: its inline policies and the template's managed policies it attaches."""
    resources = _template()["Resources"]
    role = resources[_ref(function["Role"])]
    assert role["Type"] == "AWS::IAM::Role"
    statements = [s for policy in role["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]
    for arn in role["Properties"].get("ManagedPolicyArns", []):
        # Only the template's own managed policies: an AWS managed policy would bring grants nobody reviewed here.
        managed = resources[_ref(arn)]
        assert managed["Type"] == "AWS::IAM::ManagedPolicy"
        statements += managed["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _granted(function: dict[str, Any], action: str) -> list[Any]:
    return [
        resource
        for s in _statements(function)
        if s["Effect"] == "Allow" and action in _as_list(s["Action"])
        for resource in _as_list(s["Resource"])
    ]


def _overrides(environment: dict[str, Any]) -> dict[str, str]:
    raw = environment["deploy"]["parameters"]["parameter_overrides"]
    pairs = shlex.split(raw) if isinstance(raw, str) else list(raw)
    return dict(pair.split("=", 1) for pair in pairs)


# ----------------------------------------------------------------------------------------------------------- lint


def test_cfn_lint_reports_no_error_or_warning() -> None:
    pytest.importorskip("cfnlint", reason="cfn-lint is not installed")
    # cfn-lint 1.x has no `python -m cfnlint` entry point; this is what its `cfn-lint` console script runs.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(TEMPLATE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ functions, API


def test_every_function_in_the_template_resolves_to_a_handler_that_imports() -> None:
    functions = _functions()
    for folder, props in functions.items():
        module, _, attr = props["Handler"].partition(".")
        assert (ROOT / props["CodeUri"] / f"{module}.py").is_file()
        assert callable(load_handler(folder)) and attr == "lambda_handler"
        # Packaged as they are (SkipBuild): a handler folder must not expect dependencies of its own.
        assert props["Metadata"] == {"SkipBuild": True}
        assert not (ROOT / props["CodeUri"] / "requirements.txt").exists()
    assert set(functions) == {p.name for p in FUNCTIONS_DIR.iterdir() if (p / "app.py").is_file()}
    assert set(functions) == set(SENDS_TO)


def test_functions_run_python_3_13_on_arm64_with_tracing_and_both_layers() -> None:
    layers = _resources("AWS::Serverless::LayerVersion")
    assert set(layers) == {"SharedLayer", "DependenciesLayer"}
    makefile = (ROOT / "Makefile").read_text()
    for name, layer in layers.items():
        props = layer["Properties"]
        assert props["ContentUri"] == "."
        assert props["CompatibleRuntimes"] == ["python3.13"]
        assert props["CompatibleArchitectures"] == ["arm64"]
        assert props["RetentionPolicy"] == "Delete"
        assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
        # `sam build` runs the Makefile target named after the layer's logical id.
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), f"Makefile has no build-{name} target"
    for props in _functions().values():
        assert props["Runtime"] == "python3.13"
        assert props["Architectures"] == ["arm64"]
        assert props["Tracing"] == "Active"
        assert sorted(_ref(layer) for layer in props["Layers"]) == ["DependenciesLayer", "SharedLayer"]


def test_template_routes_match_the_local_runner_routes() -> None:
    template_routes = set()
    for folder, props in _functions().items():
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                assert _ref(event["Properties"]["ApiId"]) == "HttpApi"
                assert event["Properties"]["PayloadFormatVersion"] == "2.0"
                template_routes.add((event["Properties"]["Method"], event["Properties"]["Path"], folder))
    assert template_routes == set(ROUTES)


def test_the_http_api_has_no_cors_and_throttles_every_route() -> None:
    api = _resources("AWS::Serverless::HttpApi")
    assert set(api) == {"HttpApi"}
    props = api["HttpApi"]["Properties"]
    assert "CorsConfiguration" not in props
    assert props["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert props["DefaultRouteSettings"]["ThrottlingBurstLimit"] > 0
    # Access logs name the route template, never the path (a provider webhook path carries a per-step token).
    log_format = props["AccessLogSettings"]["Format"]
    assert "$context.routeKey" in log_format and "$context.path" not in log_format
    json.loads(log_format)


def test_every_function_logs_to_its_own_log_group_with_the_retention_parameter() -> None:
    log_groups = _resources("AWS::Logs::LogGroup")
    used = set()
    for folder, props in _functions().items():
        name = "${AWS::StackName}-" + folder.replace("_", "-")
        assert props["FunctionName"] == {"Fn::Sub": name}
        group_id = _ref(props["LoggingConfig"]["LogGroup"])
        group = log_groups[group_id]["Properties"]
        assert group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{name}"}
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        # The function's role may write to its own log group only.
        assert _granted(props, "logs:PutLogEvents") == [{"Fn::GetAtt": [group_id, "Arn"]}]
        assert _granted(props, "logs:CreateLogStream") == [{"Fn::GetAtt": [group_id, "Arn"]}]
        assert _granted(props, "logs:CreateLogGroup") == []
        used.add(group_id)
    assert len(used) == len(_functions())
    for group in log_groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# --------------------------------------------------------------------------------------------------------- queues


def test_every_queue_has_a_dead_letter_queue_with_redrive() -> None:
    queues = _resources("AWS::SQS::Queue")
    dead_letter = {n for n, q in queues.items() if "RedrivePolicy" not in q["Properties"]}
    main = set(queues) - dead_letter
    assert main == {"StepQueue", "CallbackQueue"}
    targets = set()
    for name in main:
        redrive = queues[name]["Properties"]["RedrivePolicy"]
        assert redrive["maxReceiveCount"] == 5
        targets.add(_ref(redrive["deadLetterTargetArn"]))
    assert targets == dead_letter and len(dead_letter) == len(main)  # one DLQ each
    for name in dead_letter:
        assert queues[name]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True


def test_sqs_event_sources_report_batch_item_failures_with_bounded_concurrency() -> None:
    parameters = _template()["Parameters"]
    consumed = {}
    for folder, props in _functions().items():
        for event in props.get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            source = event["Properties"]
            assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            assert 1 <= source["BatchSize"] <= 10
            assert 0 <= source["MaximumBatchingWindowInSeconds"] <= 5
            limit = parameters[_ref(source["ScalingConfig"]["MaximumConcurrency"])]
            assert limit["MinValue"] >= 2 and limit["MaxValue"] <= 1000  # what Lambda accepts
            consumed[folder] = _ref(source["Queue"])
    assert consumed == CONSUMES


def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout() -> None:
    queues = _resources("AWS::SQS::Queue")
    functions = _functions()
    for folder, queue in CONSUMES.items():
        visibility = queues[queue]["Properties"]["VisibilityTimeout"]
        assert visibility >= 6 * functions[folder]["Timeout"], (queue, visibility, functions[folder]["Timeout"])


def test_a_callback_attempt_fits_its_function_and_its_lease_outlasts_the_function() -> None:
    # A slow receiver must hold one instance for one attempt, never a batch; an attempt still running must never be
    # claimed again (the lease), and the function's timeout must leave room for claiming and recording.
    settings = Settings()  # the defaults the template relies on
    sender = _functions()["callback_sender"]
    (event,) = sender["Events"].values()
    assert event["Properties"]["BatchSize"] == 1
    assert settings.callback_timeout_seconds + 5 <= sender["Timeout"] < settings.callback_stale_seconds


def test_consumers_that_requeue_onto_their_own_queue_allow_recursive_loops() -> None:
    # Lambda stops an SQS -> function -> same SQS chain after about 16 hops unless told it is intended; a video step
    # polls for much longer than that.
    for folder, queue in CONSUMES.items():
        assert queue in SENDS_TO[folder]
        assert _functions()[folder]["RecursiveLoop"] == "Allow"


def test_the_sweeper_runs_every_minute_on_eventbridge_scheduler_without_piling_up_retries() -> None:
    sweeper = _functions()["sweeper"]
    (event,) = sweeper["Events"].values()
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert event["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-sweeper"}
    assert sweeper["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert sweeper["Timeout"] < 60


# ------------------------------------------------------------------------------------------------------- artifacts


def test_the_artifact_bucket_is_private_encrypted_expiring_and_tls_only() -> None:
    (bucket_id,) = _resources("AWS::S3::Bucket")
    props = _resources("AWS::S3::Bucket")[bucket_id]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
    rules = props["LifecycleConfiguration"]["Rules"]
    plain = [rule for rule in rules if "Fn::If" not in rule]
    assert all(rule["Status"] == "Enabled" for rule in plain)
    assert any(
        rule.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation", 0) >= 1 and "Prefix" not in rule
        for rule in rules
    )
    (policy,) = _resources("AWS::S3::BucketPolicy").values()
    assert _ref(policy["Properties"]["Bucket"]) == bucket_id
    deny_plain_http = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s["Principal"] == "*"
        and s["Action"] in ("s3:*", ["s3:*"])
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert len(deny_plain_http) == 1
    assert deny_plain_http[0]["Resource"] == [
        {"Fn::GetAtt": [bucket_id, "Arn"]},
        {"Fn::Sub": "${" + bucket_id + ".Arn}/*"},
    ]


def test_run_retention_and_artifact_expiry_follow_one_parameter() -> None:
    """RetentionDays feeds the sweeper's purge (BABYCHAIN_RETENTION_DAYS, in every function's environment) and the
    bucket rule that expires step outputs under runs/; 0 keeps everything: the rule is left out altogether (S3 has no
    "never" and refuses 0 days), and the purge is off."""
    from babychain.config import BY_ENV

    parameter = _template()["Parameters"]["RetentionDays"]
    variable = BY_ENV["BABYCHAIN_RETENTION_DAYS"]
    assert parameter["Type"] == "Number"
    assert parameter["Default"] == variable.default == 30
    assert parameter["MinValue"] == variable.minimum == 0
    assert variable.maximum is not None and 1 <= parameter["MaxValue"] <= variable.maximum
    assert _template()["Conditions"]["HasRetention"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RetentionDays"}, 0]}]}
    for folder, props in _functions().items():
        assert props["Environment"]["Variables"]["BABYCHAIN_RETENTION_DAYS"] == {"Ref": "RetentionDays"}, folder

    (bucket,) = _resources("AWS::S3::Bucket").values()
    conditional = [
        rule["Fn::If"] for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"] if "Fn::If" in rule
    ]
    assert conditional == [
        [
            "HasRetention",
            {
                "Id": "ExpireRunArtifacts",
                "Status": "Enabled",
                "Prefix": "runs/",
                "ExpirationInDays": {"Ref": "RetentionDays"},
            },
            {"Ref": "AWS::NoValue"},
        ]
    ]
    # Where the outputs are written is where the rule looks, and where the local purge deletes.
    from babychain.artifacts import run_prefix

    assert run_prefix("00000000-0000-4000-8000-000000000000").startswith("runs/")
    # Nothing else expires run data: no other rule with an expiration.
    others = [rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"] if "Fn::If" not in rule]
    assert not any("ExpirationInDays" in rule or "ExpirationDate" in rule for rule in others)


# ------------------------------------------------------------------------------------------------------------ IAM


def test_every_function_has_its_own_role_and_no_sam_generated_policies() -> None:
    roles = [_ref(props["Role"]) for props in _functions().values()]
    assert len(set(roles)) == len(roles)
    for props in _functions().values():
        # A SAM-generated role would attach AWSLambdaBasicExecutionRole (logs on "*"); Policies would need one.
        assert "Policies" not in props
    for role in _resources("AWS::IAM::Role").values():
        assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]


def test_no_iam_statement_grants_star_except_what_aws_requires() -> None:
    statements = [
        s
        for kind in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")
        for resource in _resources(kind).values()
        for s in (
            [s for p in resource["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
            if kind == "AWS::IAM::Role"
            else resource["Properties"]["PolicyDocument"]["Statement"]
        )
    ]
    assert statements
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = set(_as_list(s["Action"]))
        assert not any("*" in action for action in actions), s
        if "*" in _as_list(s["Resource"]):
            # X-Ray has no resource-level permissions. (Metrics go out as Embedded Metric Format in the logs, so no
            # cloudwatch:PutMetricData is granted at all.)
            assert actions <= STAR_RESOURCE_ACTIONS, s
    granted = {action for s in statements for action in _as_list(s["Action"])}
    assert "cloudwatch:PutMetricData" not in granted


def test_each_function_gets_exactly_the_queues_and_bucket_actions_it_uses() -> None:
    for folder, props in _functions().items():
        sends = {_ref(r) for r in _granted(props, "sqs:SendMessage")}
        assert sends == SENDS_TO[folder], folder
        for action in SQS_CONSUMER_ACTIONS:
            assert [_ref(r) for r in _granted(props, action)] == ([CONSUMES[folder]] if folder in CONSUMES else [])
        s3_actions = set()
        for s in _statements(props):
            actions = {a for a in _as_list(s["Action"]) if a.startswith("s3:")}
            if actions:
                assert _as_list(s["Resource"]) == [RUNS_PREFIX], (folder, s)
                s3_actions |= actions
        assert s3_actions == S3_ACTIONS[folder], folder
        services = {a.split(":")[0] for s in _statements(props) for a in _as_list(s["Action"])}
        assert services <= {"logs", "sqs", "s3", "secretsmanager", "xray"}, (folder, services)


def test_every_function_may_read_only_the_secret_named_by_the_parameter() -> None:
    conditions = _template()["Conditions"]
    assert conditions["SecretsIdIsArn"] == {
        "Fn::Equals": [{"Fn::Select": [0, {"Fn::Split": [":", {"Ref": "SecretsId"}]}]}, "arn"]
    }
    expected = {
        "Fn::If": [
            "SecretsIdIsArn",
            {"Ref": "SecretsId"},
            {"Fn::Sub": SECRET_ARN_FROM_NAME},
        ]
    }
    for folder, props in _functions().items():
        assert _granted(props, "secretsmanager:GetSecretValue") == [expected], folder


# -------------------------------------------------------------------------------------------------------- secrets


def test_no_secret_is_a_parameter_or_an_environment_value() -> None:
    parameters = _template()["Parameters"]
    assert set(parameters) == PARAMETERS
    for name, parameter in parameters.items():
        assert "NoEcho" not in parameter, name
        if name != "SecretsId":  # a name or ARN, not a value
            assert not re.search(r"key|secret|token|password|dsn|database", name, re.IGNORECASE), name
    try:
        from babychain.observability import SECRET_VARIABLES as CODE_SECRETS
    except ImportError:  # pragma: no cover - the list lives in the code; the template check stands without it
        CODE_SECRETS = ()
    for folder, props in _functions().items():
        env = props["Environment"]["Variables"]
        assert not set(env) & (SECRET_KEYS | set(CODE_SECRETS)), folder
        for name, value in env.items():
            if isinstance(value, str):  # literals must be plain settings
                assert re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", value), (folder, name, value)


def test_the_template_text_holds_nothing_that_looks_like_key_material() -> None:
    text = TEMPLATE.read_text()
    for pattern in (
        r"whsec_[A-Za-z0-9+/=]{8,}",  # Standard Webhooks secret
        r"\bbc_[A-Za-z0-9_-]{16,}",  # BabyChain API key
        r"postgres(ql)?://\S+",  # connection string
        r"eyJ[A-Za-z0-9_-]{10,}\.",  # JWT (Supabase keys)
        r"\b(sk|pk)[-_][A-Za-z0-9]{16,}",  # provider-style keys
        r"https://[0-9a-f]{32}@",  # Sentry DSN
    ):
        assert not re.search(pattern, text), pattern


def test_every_function_gets_the_settings_the_code_reads() -> None:
    outputs = _template()["Outputs"]
    for folder, props in _functions().items():
        env = props["Environment"]["Variables"]
        for name, value in COMMON_ENV.items():
            assert env[name] == value, (folder, name)
        assert env.keys() >= POWERTOOLS_ENV
        if folder not in {f for _, _, f in ROUTES}:
            # The API's own URL, for provider webhooks (functions behind the API cannot refer back to it).
            assert env["BABYCHAIN_PUBLIC_URL"] == outputs["ApiUrl"]["Value"]
    assert outputs["ApiUrl"]["Value"] == {"Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}


def test_every_variable_the_template_sets_is_declared_in_the_settings() -> None:
    from babychain.config import BY_ENV, POWERTOOLS_VARIABLES

    known = set(BY_ENV) | {p.env for p in POWERTOOLS_VARIABLES}
    for folder, props in _functions().items():
        assert set(props["Environment"]["Variables"]) <= known, (folder, set(props["Environment"]["Variables"]) - known)


# --------------------------------------------------------------------------------------------- alarms, outputs


def test_alarms_watch_every_dead_letter_queue_and_every_function() -> None:
    alarms = [a["Properties"] for a in _resources("AWS::CloudWatch::Alarm").values()]
    for alarm in alarms:
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }
    watched = {
        (a["Namespace"], a["MetricName"], json.dumps(a["Dimensions"][0]["Value"], sort_keys=True)) for a in alarms
    }
    for queue in ("StepDeadLetterQueue", "CallbackDeadLetterQueue"):
        value = json.dumps({"Fn::GetAtt": [queue, "QueueName"]}, sort_keys=True)
        assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", value) in watched
    for props in _functions().values():
        value = json.dumps({"Ref": props["LogicalId"]}, sort_keys=True)
        assert ("AWS/Lambda", "Errors", value) in watched
        assert ("AWS/Lambda", "Throttles", value) in watched
    assert _template()["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}


def test_outputs_name_the_api_queues_dead_letter_queues_and_bucket() -> None:
    outputs = _template()["Outputs"]
    assert outputs.keys() >= {
        "ApiUrl",
        "StepQueueUrl",
        "CallbackQueueUrl",
        "StepDeadLetterQueueUrl",
        "CallbackDeadLetterQueueUrl",
        "ArtifactBucketName",
    }
    assert outputs["StepQueueUrl"]["Value"] == {"Ref": "StepQueue"}
    assert outputs["CallbackQueueUrl"]["Value"] == {"Ref": "CallbackQueue"}
    assert outputs["ArtifactBucketName"]["Value"] == {"Ref": "ArtifactBucket"}


# ---------------------------------------------------------------------------------------------- samconfig, docs


def test_samconfig_environments_override_only_template_parameters_with_allowed_values() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    parameters = _template()["Parameters"]
    assert {"default", "dev"} <= set(config)
    stacks = set()
    for env_name in ("default", "dev"):
        env = config[env_name]
        stacks.add(env["global"]["parameters"]["stack_name"])
        assert "CAPABILITY_IAM" in env["deploy"]["parameters"]["capabilities"]
        overrides = _overrides(env)
        assert set(overrides) <= set(parameters), env_name
        required = {n for n, p in parameters.items() if "Default" not in p}
        assert required <= set(overrides), env_name
        for name, value in overrides.items():
            parameter = parameters[name]
            if "AllowedValues" in parameter:
                assert value in [str(v) for v in parameter["AllowedValues"]], (env_name, name, value)
            if "MinValue" in parameter:
                assert parameter["MinValue"] <= float(value) <= parameter["MaxValue"], (env_name, name, value)
            if "AllowedPattern" in parameter:
                assert re.fullmatch(parameter["AllowedPattern"], value), (env_name, name, value)
    assert len(stacks) == 2
    for stack in stacks:  # function names are "<stack>-provider-webhook" at most, within Lambda's 64 characters
        assert len(stack + "-provider-webhook") <= 64


def test_the_deploy_guide_matches_the_template() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    secret_templates = [
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", guide, re.DOTALL)
        if "BABYCHAIN_CALLBACK_SECRET" in block
    ]
    assert secret_templates and set(secret_templates[0]) == SECRET_KEYS
    for name in PARAMETERS | {"ApiUrl", "ArtifactBucketName", "StepDeadLetterQueueArn", "CallbackDeadLetterQueueArn"}:
        assert name in guide, name
    for output in ("StepDeadLetterQueueArn", "CallbackDeadLetterQueueArn"):
        assert output in _template()["Outputs"]
    namespace = _template()["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert namespace["Fn::Sub"].replace("${AWS::StackName}", "<stack name>") in guide


def test_snapstart_on_create_run_and_the_step_executor_where_lambda_allows_it() -> None:
    functions = _functions()
    snapstarted = {name for name, props in functions.items() if "SnapStart" in props}
    assert snapstarted == {"create_run", "step_executor"}
    for name in snapstarted:
        props = functions[name]
        # SnapStart applies to published versions: SAM publishes one on each deploy and points the events at the alias.
        assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        assert props["AutoPublishAlias"] == "live" and props["AutoPublishAliasAllProperties"] is True
        # What Lambda refuses with SnapStart.
        assert "ProvisionedConcurrencyConfig" not in props and "FileSystemConfigs" not in props
        assert props.get("EphemeralStorage", {"Size": 512})["Size"] <= 512
