//! `bora serve` over HTTP (ureq as the client) on the tiny Mistral with the v1 tokenizer:
//! completions and chat completions give the text `bora run` gives for the same ids; a
//! stream's SSE frames add up to the same text and end with `data: [DONE]`; eight concurrent
//! requests, batched together, each give their single-request answer (BF16 weights take the
//! same f32 kernels at any batch size, so the answers are identical); bad requests get
//! OpenAI error objects.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn model() -> String {
    fixtures().join("eval/tiny_mistral").display().to_string()
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Server {
    start_model(&model(), extra)
}

fn start_model(model: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(["serve", model, "--port", "0"])
        .args(if extra.contains(&"--parallel") {
            &[][..]
        } else {
            &["--parallel", "8"][..]
        })
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("the server exited").unwrap();
        if let Some(rest) = line.split("serving on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

fn post(s: &Server, path: &str, body: serde_json::Value) -> serde_json::Value {
    ureq::post(&format!("{}{path}", s.base))
        .send_json(body)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_json()
        .unwrap()
}

fn bora_run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .arg("run")
        .arg(model())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

#[test]
fn completions_chat_streams_and_concurrency_match_single_runs() {
    let s = start();
    let prompts = [
        "The sliding window",
        "Once upon a time",
        "Mistral 7B uses grouped-query attention",
        "1 2 3 4",
        "Ünïcode",
        "A",
        "The capital of France is",
        "def f(x):",
    ];
    // One at a time: the text `bora run -p` continues with.
    let single: Vec<String> = prompts
        .iter()
        .map(|p| {
            let r = post(
                &s,
                "/v1/completions",
                serde_json::json!({"prompt": p, "max_tokens": 12, "temperature": 0}),
            );
            assert_eq!(r["usage"]["completion_tokens"], 12);
            assert_eq!(r["choices"][0]["finish_reason"], "length");
            let text = r["choices"][0]["text"].as_str().unwrap().to_string();
            let run = bora_run(&["-p", p, "-n", "12", "--temp", "0"]);
            assert_eq!(format!("{p}{text}"), run, "{p}");
            text
        })
        .collect();
    // All at once, batched by the engine: the same answers.
    std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let s = &s;
                sc.spawn(move || {
                    let r = post(
                        s,
                        "/v1/completions",
                        serde_json::json!({"prompt": p, "max_tokens": 12, "temperature": 0}),
                    );
                    r["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&single) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
    // A stream: SSE frames that add up to the same text, then [DONE].
    let resp = ureq::post(&format!("{}/v1/completions", s.base))
        .send_json(serde_json::json!({"prompt": prompts[0], "max_tokens": 12, "temperature": 0, "stream": true}))
        .unwrap();
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let body = resp.into_string().unwrap();
    let frames: Vec<&str> = body.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"), "{body}");
    let mut text = String::new();
    let mut finish = None;
    for f in &frames[..frames.len() - 1] {
        let json = f
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data frame: {f:?}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
        if let Some(r) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(r.to_string());
        }
    }
    assert_eq!(text, single[0]);
    assert_eq!(finish.as_deref(), Some("length"));
    // A chat turn: the ids `bora tokenize --chat` gives, continued as `bora run` continues them.
    let messages = serde_json::json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]);
    let id_list = chat_ids(std::path::Path::new(&model()), &messages);
    let r = post(
        &s,
        "/v1/chat/completions",
        serde_json::json!({"messages": messages, "max_tokens": 10, "temperature": 0}),
    );
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str().unwrap(),
        bora_run(&["--ids", &id_list, "-n", "10", "--temp", "0"])
    );
    assert_eq!(
        r["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        id_list.split(',').count()
    );
    // /metrics afterwards: every answer counted, and no KV block left in use.
    let text = settled_metrics(&s);
    assert!(
        metric(&text, "bora_requests_total{status=\"200\"}") >= 18.0,
        "{text}"
    );
    assert!(
        metric(&text, "bora_generated_tokens_total ") >= 16.0 * 12.0 + 10.0,
        "{text}"
    );
    assert!(
        metric(&text, "bora_time_to_first_token_seconds_count ") >= 18.0,
        "{text}"
    );
    assert!(metric(&text, "bora_kv_blocks_free ") > 0.0);
}

/// The value of a metric in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `/metrics` once no KV block is held (or after 5 s), checked to show no block held and no
/// sequence running.
fn settled_metrics(s: &Server) -> String {
    let t0 = std::time::Instant::now();
    let text = loop {
        let text = ureq::get(&format!("{}/metrics", s.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        if metric(&text, "bora_kv_blocks_used ") == 0.0 || t0.elapsed().as_secs() > 5 {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "bora_kv_blocks_used "),
        0.0,
        "blocks leaked:\n{text}"
    );
    assert_eq!(metric(&text, "bora_running_sequences "), 0.0);
    text
}

/// curl sees exactly SSE: `data: {json}` events separated by blank lines, one per piece,
/// then `data: [DONE]`, with the event-stream content type and no buffering of the whole.
/// `usage.prompt_tokens_details.cached_tokens` counts the prefix-cache hit also when a stop
/// string ends the answer (the server stops reading the engine's events there).
#[test]
fn cached_tokens_are_reported_when_a_stop_string_ends_the_answer() {
    let s = start();
    let prompt = "The sliding window attention of Mistral 7B keeps a rolling buffer of keys and \
                  values, so a long conversation costs the same memory per step as a short one.";
    let ask = |stop: Option<&str>| {
        let mut body = serde_json::json!({"prompt": prompt, "max_tokens": 12, "temperature": 0});
        if let Some(stop) = stop {
            body["stop"] = serde_json::json!([stop]);
        }
        post(&s, "/v1/completions", body)
    };
    let first = ask(None);
    let text = first["choices"][0]["text"].as_str().unwrap().to_string();
    let stop: String = text.chars().skip(3).take(2).collect();
    assert_eq!(stop.chars().count(), 2, "answer too short: {text:?}");
    let stopped = ask(Some(&stop));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop", "{stopped}");
    let again = ask(None);
    let cached = |r: &serde_json::Value| {
        r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert!(cached(&again) > 0, "{again}");
    assert_eq!(cached(&stopped), cached(&again), "{stopped}");
}

/// vLLM's `/tokenize` and `/detokenize` give sentencepiece's ids and text for the model's
/// tokenizer (tokenizer_v1/cases.json, made with sentencepiece on Mistral's v1 model): with
/// BOS by default, without it when `add_special_tokens` is false; bad requests get 400.
#[test]
fn tokenize_and_detokenize_match_sentencepiece() {
    let s = start();
    let cases = read_json(&fixtures().join("tokenizer_v1/cases.json"));
    let cases: Vec<&serde_json::Value> = cases
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["ids"].as_array().unwrap().len() >= 4 && c.get("contains_special_literal").is_none()
        })
        .take(12)
        .collect();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let ids: Vec<u64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let plain = post(
            &s,
            "/tokenize",
            serde_json::json!({"prompt": c["text"], "add_special_tokens": false, "return_token_strs": true}),
        );
        assert_eq!(plain["tokens"], serde_json::json!(ids), "{c}");
        assert_eq!(plain["count"], ids.len());
        assert_eq!(plain["token_strs"].as_array().unwrap().len(), ids.len());
        assert_eq!(plain["max_model_len"], 2048);
        let with_bos = post(&s, "/tokenize", serde_json::json!({"prompt": c["text"]}));
        assert_eq!(with_bos["tokens"][0], 1);
        assert_eq!(
            with_bos["tokens"].as_array().unwrap()[1..],
            plain["tokens"].as_array().unwrap()[..]
        );
        let text = post(&s, "/detokenize", serde_json::json!({"tokens": ids}));
        assert_eq!(text["prompt"], c["decoded"], "{c}");
    }
    let status =
        |path: &str, body: serde_json::Value| match ureq::post(&format!("{}{path}", s.base))
            .send_json(body)
        {
            Err(ureq::Error::Status(code, r)) => {
                (code, r.into_json::<serde_json::Value>().unwrap())
            }
            other => panic!("{path}: expected an error status, got {other:?}"),
        };
    let (code, e) = status("/detokenize", serde_json::json!({"tokens": [5, 32000]}));
    assert_eq!(code, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("32000"),
        "{e}"
    );
    let (code, _) = status(
        "/tokenize",
        serde_json::json!({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}),
    );
    assert_eq!(code, 400);
}

#[test]
fn curl_reads_server_sent_events() {
    let s = start();
    let out = Command::new("curl")
        .args([
            "-sN",
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"{"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "stream": true}"#)
        .arg(format!("{}/v1/completions", s.base))
        .output()
        .expect("curl is needed (.ci/run installs it)");
    assert!(out.status.success());
    let raw = String::from_utf8(out.stdout).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    let events: Vec<&str> = body.strip_suffix("\n\n").unwrap().split("\n\n").collect();
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        assert_eq!(e.lines().count(), 1, "one data line per event: {e:?}");
        let v: serde_json::Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["object"], "text_completion");
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
    }
    let whole = post(
        &s,
        "/v1/completions",
        serde_json::json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    // Text pieces, then one event with the finish reason only.
    assert!(events.len() >= 3, "{events:?}");
}

/// 32 streaming clients at once, prompts of 3 to 250 tokens, in a KV pool too small to hold
/// them all: each gets its single-request answer with the right token count, a few that
/// leave mid-stream are dropped, and afterwards no KV block is held.
#[test]
fn thirty_two_streaming_clients_get_their_answers_and_leak_nothing() {
    // 256 blocks of 16 positions (tiny_mistral: 4 KiB a block).
    let s = start_with(&["--parallel", "32", "--kv-memory-mib", "1", "-b", "128"]);
    let prompts: Vec<String> = (0..32)
        .map(|i| {
            let words = ["the", "window", "slides", "over", "keys", "and", "values"];
            (0..1 + i * i / 4)
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let max_tokens = |i: usize| 8 + i % 24;
    let single: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = post(
                &s,
                "/v1/completions",
                serde_json::json!({"prompt": p, "max_tokens": max_tokens(i), "temperature": 0}),
            );
            r["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    let base = s.base.clone();
    let results: Vec<Option<(String, u64, String)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let url = format!("{base}/v1/completions");
                sc.spawn(move || {
                    let body = serde_json::json!({"prompt": p, "max_tokens": max_tokens(i),
                        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
                    let resp = ureq::post(&url).send_json(body).unwrap();
                    let mut lines = BufReader::new(resp.into_reader()).lines();
                    let (mut text, mut tokens, mut finish) = (String::new(), 0, String::new());
                    let mut events = 0;
                    while let Some(Ok(line)) = lines.next() {
                        let Some(data) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        if data == "[DONE]" {
                            return Some((text, tokens, finish));
                        }
                        events += 1;
                        // Every eighth client leaves after two events.
                        if i % 8 == 5 && events == 2 {
                            return None;
                        }
                        let v: serde_json::Value = serde_json::from_str(data).unwrap();
                        if let Some(c) = v["choices"].get(0) {
                            text.push_str(c["text"].as_str().unwrap_or(""));
                            if let Some(r) = c["finish_reason"].as_str() {
                                finish = r.to_string();
                            }
                        }
                        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                            tokens = n;
                        }
                    }
                    panic!("client {i}: the stream ended without [DONE]");
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in results.iter().enumerate() {
        match r {
            None => assert_eq!(i % 8, 5),
            Some((text, tokens, finish)) => {
                assert_eq!(text, &single[i], "client {i}");
                assert_eq!(*tokens as usize, max_tokens(i), "client {i}");
                assert_eq!(finish, "length", "client {i}");
            }
        }
    }
    let text = settled_metrics(&s);
    assert_eq!(metric(&text, "bora_waiting_sequences "), 0.0);
    eprintln!(
        "preemptions: {}, prefix-cache hit rate: {}",
        metric(&text, "bora_preemptions_total "),
        metric(&text, "bora_prefix_cache_hit_rate ")
    );
    // The single runs warmed the prefix cache for the longer prompts.
    assert!(metric(&text, "bora_prefix_cache_hit_rate ") > 0.0, "{text}");
}

#[test]
fn bad_requests_get_openai_error_objects() {
    let s = start();
    let url = |p: &str| format!("{}{p}", s.base);
    let err = |r: Result<ureq::Response, ureq::Error>| -> (u16, serde_json::Value) {
        match r {
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap()),
            other => panic!(
                "expected an error status, got {:?}",
                other.map(|r| r.status())
            ),
        }
    };
    let (code, body) = err(ureq::post(&url("/v1/completions"))
        .set("content-type", "application/json")
        .send_string("{\"prompt\": "));
    assert_eq!(code, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (code, body) =
        err(ureq::post(&url("/v1/completions")).send_json(serde_json::json!({"prompt": 3})));
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt"),
        "{body}"
    );
    let long = "word ".repeat(3000);
    let (code, body) =
        err(ureq::post(&url("/v1/completions")).send_json(serde_json::json!({"prompt": long})));
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{body}"
    );
    let (code, _) = err(
        ureq::post(&url("/v1/chat/completions")).send_json(serde_json::json!({"messages": []}))
    );
    assert_eq!(code, 400);
    let (code, _) = err(ureq::post(&url("/v1/completions"))
        .send_json(serde_json::json!({"prompt": "x", "temperature": -1})));
    assert_eq!(code, 400);
    let (code, _) = err(ureq::get(&url("/v1/nothing")).call());
    assert_eq!(code, 404);
    // A body over the limit: 413. The server answers before reading it all, so the client
    // must take the answer while still sending: curl does, ureq sees a broken pipe.
    let big = std::env::temp_dir().join(format!("bora-big-{}.json", std::process::id()));
    std::fs::write(
        &big,
        serde_json::json!({"prompt": "a".repeat(3 << 20)}).to_string(),
    )
    .unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .arg(url("/v1/completions"))
        .output()
        .expect("curl is needed (.ci/run installs it)");
    std::fs::remove_file(&big).ok();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "413", "{text}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("2 MB"),
        "{body}"
    );
    let health: serde_json::Value = ureq::get(&url("/health"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: serde_json::Value = ureq::get(&url("/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny_mistral");
}

/// Runs `tests/support/SCRIPT` with the Python packages a fetch script installed (its folder in
/// `env_var`, or under ~/.cache/bora/pypi/`sub`, holding `package`) and `envs`; returns its
/// output, having checked that it succeeded.
fn run_python_support(
    script: &str,
    (env_var, sub, package, fetch): (&str, &str, &str, &str),
    envs: &[(&str, String)],
) -> String {
    let dir = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/bora/pypi").join(sub)
        });
    assert!(
        dir.join(package).is_dir(),
        "{}: {package} is not installed: run tools/{fetch} (or tools/test.sh), or set {env_var}",
        dir.display()
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let out = Command::new("python3")
        .arg(path)
        .env("PYTHONPATH", &dir)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The real openai Python client (tools/fetch-openai-client.sh, run by tools/test.sh) against
/// the server with an API key: chat (plain and streamed), completions, max_tokens, a stop
/// string, seed reproducibility, logprobs, echo, n, penalties, an invalid request, a wrong key
/// (tests/support/openai_client.py).
#[test]
fn the_openai_python_client_works_unchanged() {
    let s = start_with(&["--api-key", "sk-test"]);
    run_python_support(
        "openai_client.py",
        (
            "BORA_OPENAI_CLIENT",
            "openai-client",
            "openai",
            "fetch-openai-client.sh",
        ),
        &[
            ("OPENAI_BASE_URL", format!("{}/v1", s.base)),
            ("OPENAI_API_KEY", "sk-test".into()),
        ],
    );
    // Without the key, the same server refuses.
    match ureq::get(&format!("{}/v1/models", s.base)).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {:?}", other.map(|r| r.status())),
    }
}

/// EleutherAI's lm-evaluation-harness (tools/fetch-lm-eval.sh, run by tools/test.sh), model
/// `local-completions`, scores the sample MMLU and multiple-choice tasks through the server
/// (`echo` + `logprobs`) and generates the GSM8K and HumanEval answers (`stop`,
/// `max_tokens`): every log-likelihood within 1e-3 of lm-eval's HF-backend run on the same
/// model, the same accuracies and the same greedy text (tests/support/lm_eval_client.py).
#[test]
fn lm_eval_scores_through_the_server_as_through_transformers() {
    let s = start_with(&["-b", "256"]);
    let stdout = run_python_support(
        "lm_eval_client.py",
        ("BORA_LM_EVAL", "lm-eval", "lm_eval", "fetch-lm-eval.sh"),
        &[("BORA_URL", format!("{}/v1/completions", s.base))],
    );
    assert!(stdout.contains("match"), "{stdout}");
}

/// `/tokenize` of a conversation on the demo model, whose chat template is ChatML: the ids
/// transformers' `apply_chat_template` gives (tests/fixtures/chat/transformers_templates.json),
/// and without `add_generation_prompt` the same ids less the prompt that opens the answer
/// (`<|im_start|>assistant\n`: ids 1, 520, 9531, 198), or the same ids where a final
/// assistant message is continued.
#[test]
fn tokenize_renders_the_chat_template_with_and_without_the_generation_prompt() {
    let model = smollm2_path().display().to_string();
    let s = start_model(&model, &["-t", "2"]);
    let fixture = read_json(&fixtures().join("chat/transformers_templates.json"));
    for case in fixture["cases"].as_array().unwrap() {
        let want = &case["expected"]["smollm2"]["ids"];
        let messages = &case["messages"];
        let with = post(&s, "/tokenize", serde_json::json!({"messages": messages}));
        assert_eq!(&with["tokens"], want, "{}", case["name"]);
        let without = post(
            &s,
            "/tokenize",
            serde_json::json!({"messages": messages, "add_generation_prompt": false}),
        );
        let want = want.as_array().unwrap();
        if messages.as_array().unwrap().last().unwrap()["prefix"] == true {
            // A final assistant message is continued: no generation prompt either way.
            assert_eq!(
                without["tokens"].as_array().unwrap(),
                want,
                "{}",
                case["name"]
            );
            continue;
        }
        let (head, opening) = want.split_at(want.len() - 4);
        assert_eq!(
            opening,
            serde_json::json!([1, 520, 9531, 198]).as_array().unwrap()
        );
        assert_eq!(
            without["tokens"].as_array().unwrap(),
            head,
            "{}",
            case["name"]
        );
    }
}

/// On the demo model (slow enough that a 1500-token answer takes half a minute): a full
/// queue answers 429 with Retry-After; a client that leaves mid-stream frees its place within
/// seconds, so its sequence was cancelled, not finished; SIGTERM exits 0.
#[test]
fn full_queue_disconnect_and_sigterm() {
    let model = smollm2_path().display().to_string();
    let mut s = start_model(&model, &["--max-queue", "1", "-t", "2"]);
    let url = format!("{}/v1/completions", s.base);
    let long = ureq::post(&url)
        .send_json(serde_json::json!({"prompt": "x", "max_tokens": 1500, "temperature": 0, "stream": true}))
        .unwrap();
    match ureq::post(&url).send_json(serde_json::json!({"prompt": "y", "max_tokens": 2})) {
        Err(ureq::Error::Status(429, r)) => {
            assert_eq!(r.header("retry-after"), Some("1"));
            let body: serde_json::Value = r.into_json().unwrap();
            assert_eq!(body["error"]["type"], "rate_limit_error");
        }
        other => panic!("expected 429, got {:?}", other.map(|r| r.status())),
    }
    // The streaming client goes away: its sequence is cancelled and the place frees.
    drop(long);
    let t0 = std::time::Instant::now();
    loop {
        match ureq::post(&url).send_json(serde_json::json!({"prompt": "y", "max_tokens": 2})) {
            Ok(_) => break,
            Err(ureq::Error::Status(429, _)) if t0.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("the place was not freed: {e}"),
        }
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "the server did not exit on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
