//! `/v1/openapi.json` is the caller's contract: one operation per task the caller may use,
//! with that task's parameters (rules as anchored `pattern`s, the ones the command uses
//! required), regenerated on reload; a request without a valid token sees no task names.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const TOKEN_ALL: &str = "token-all-0123456789abcdef";
const TOKEN_ONE: &str = "token-one-0123456789abcdef";

fn config(extra_task: &str) -> String {
    format!(
        r#"
[[auth.tokens]]
name = "all"
secret = "{TOKEN_ALL}"
tasks = ["*"]

[[auth.tokens]]
name = "one"
secret = "{TOKEN_ONE}"
tasks = ["greet"]

[tasks.greet]
command = ["/bin/echo", "{{who}}", "{{{{literal}}}}"]
params = {{ who = "[a-z]{{1,8}}", mood = "happy|sad" }}

{extra_task}
"#
    )
}

async fn doc(addr: std::net::SocketAddr, token: Option<&str>) -> Value {
    let mut r = reqwest::Client::new().get(format!("http://{addr}/v1/openapi.json"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

fn paths(doc: &Value) -> Vec<String> {
    doc["paths"].as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn the_document_has_an_operation_per_task_with_its_parameters() {
    let app = Shiftd::builder()
        .toml(&config("[tasks.other]\ncommand = [\"/bin/true\"]\n"))
        .start()
        .await;

    // Without a token: the generic operations only, no task names.
    let public = doc(app.addr, None).await;
    let p = paths(&public);
    assert!(p.contains(&"/v1/tasks/{task}/jobs".to_string()), "{p:?}");
    assert!(
        !p.iter().any(|x| x.contains("greet") || x.contains("other")),
        "{p:?}"
    );
    assert!(
        !public.to_string().contains("happy|sad"),
        "rules are not public"
    );

    // A token limited to `greet` sees greet's operations only.
    let one = doc(app.addr, Some(TOKEN_ONE)).await;
    let p = paths(&one);
    for op in ["jobs", "jobs:batch", "pause", "resume"] {
        assert!(p.contains(&format!("/v1/tasks/greet/{op}")), "{p:?}");
    }
    assert!(
        !p.iter()
            .any(|x| x.contains("{task}") || x.contains("other")),
        "{p:?}"
    );
    let create = &one["paths"]["/v1/tasks/greet/jobs"]["post"];
    assert_eq!(create["operationId"], "create_job__greet", "{create}");
    assert!(
        !create["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "task"),
        "{create}"
    );
    let body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let name = body_ref.rsplit('/').next().unwrap();
    let body = &one["components"]["schemas"][name];
    let params = &body["properties"]["params"];
    assert_eq!(
        params["properties"]["who"]["pattern"], "^(?:[a-z]{1,8})$",
        "{params}"
    );
    assert_eq!(
        params["properties"]["mood"]["pattern"], "^(?:happy|sad)$",
        "{params}"
    );
    assert_eq!(params["required"], serde_json::json!(["who"]), "{params}");
    assert_eq!(params["additionalProperties"], false, "{params}");
    assert!(
        body["required"]
            .as_array()
            .unwrap()
            .contains(&"params".into()),
        "{body}"
    );
    // The batch's jobs carry the same parameters.
    let batch_ref = one["paths"]["/v1/tasks/greet/jobs:batch"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let batch = &one["components"]["schemas"][batch_ref.rsplit('/').next().unwrap()];
    let item_ref = batch["properties"]["jobs"]["items"]["$ref"]
        .as_str()
        .unwrap();
    let item = &one["components"]["schemas"][item_ref.rsplit('/').next().unwrap()];
    assert_eq!(item["properties"]["params"], *params, "{item}");

    // The whole set for a token that may use every task.
    let all = doc(app.addr, Some(TOKEN_ALL)).await;
    assert!(paths(&all).contains(&"/v1/tasks/other/jobs".to_string()));

    // A reload that adds a task changes the document at once.
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    app.rewrite_config(&format!(
        "{text}\n[tasks.third]\ncommand = [\"/bin/true\"]\n"
    ));
    app.signal(Signal::SIGHUP);
    app.stderr
        .wait_contains("configuration reloaded", secs(10))
        .await;
    let all = doc(app.addr, Some(TOKEN_ALL)).await;
    assert!(
        paths(&all).contains(&"/v1/tasks/third/jobs".to_string()),
        "{:?}",
        paths(&all)
    );
}
