//! `vit serve` as clients use it: the real binary on a free loopback port, driven with
//! `curl`. Answers equal `vit classify` / `vit embed` of the same files (within 1e-5: the
//! batches differ); every limit is its JSON error; SIGTERM drains.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use common::{fixture, jsonl, stderr, stdout, vit};
use serde_json::{json, Value};

/// A running `vit serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    /// Its stderr lines after the "serving on" line.
    logs: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = common::vit_command(&["serve", "--port", "0"]);
        command
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        command.env_remove("VIT_API_KEY");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("vit serve starts");
        let (lines, logs) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let base = loop {
            let line = logs
                .recv_timeout(Duration::from_secs(60))
                .expect("vit serve says where it listens");
            if let Some(address) = line.strip_prefix("vit: serving on ") {
                break address.to_string();
            }
        };
        Self { child, base, logs }
    }

    /// `curl` of `path` with `args`: the status and the body.
    fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        let output = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "60"])
            .args(args)
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// POSTs `body` as JSON (through a file: bodies are large).
    fn post_json(&self, path: &str, body: &Value, extra: &[&str]) -> (u16, Value) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body.to_string()).unwrap();
        let data = format!("@{}", file.path().display());
        let mut args = vec![
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ];
        args.extend(extra);
        let (status, text) = self.curl(path, &args);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        terminate(&self.child);
        let status = self.child.wait().unwrap();
        let logs = self.logs.try_iter().collect();
        (status, logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn data_uri(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn photos() -> Vec<std::path::PathBuf> {
    ["palette_100x75.png", "gray_l_77x59.png", "odd_301x157.jpg"]
        .iter()
        .map(|name| fixture(&format!("preprocess/images/{name}")))
        .collect()
}

fn deit() -> String {
    fixture("family/deit_p8_s32").display().to_string()
}

fn close(a: &Value, b: &Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5
}

#[test]
fn classify_and_embeddings_equal_the_command_line() {
    let model = deit();
    let server = Server::start(&["-m", &model, "--image-size", "32"], &[]);
    let paths: Vec<String> = photos().iter().map(|p| p.display().to_string()).collect();
    let mut args = vec![
        "classify",
        "-m",
        &model,
        "--image-size",
        "32",
        "-k",
        "3",
        "-f",
        "json",
    ];
    args.extend(paths.iter().map(String::as_str));
    let cli = vit(&args);
    assert!(cli.status.success(), "{}", stderr(&cli));
    let cli: Vec<Value> = serde_json::from_str(&stdout(&cli)).unwrap();

    // All photos in one JSON request, and each as raw bytes.
    let inputs: Vec<String> = photos().iter().map(|p| data_uri(p)).collect();
    let (status, answer) =
        server.post_json("/v1/classify", &json!({"input": inputs, "top_k": 3}), &[]);
    assert_eq!(status, 200, "{answer}");
    for (index, expected) in cli.iter().enumerate() {
        let got = &answer["data"][index]["predictions"];
        let raw = format!("@{}", paths[index]);
        let (status, single) = server.curl(
            "/v1/classify",
            &["-H", "Content-Type: image/png", "--data-binary", &raw],
        );
        assert_eq!(status, 200, "{single}");
        let single: Value = serde_json::from_str(&single).unwrap();
        for got in [got, &single["data"][0]["predictions"]] {
            for (ours, theirs) in got
                .as_array()
                .unwrap()
                .iter()
                .zip(expected["predictions"].as_array().unwrap())
            {
                assert_eq!(
                    ours["index"], theirs["index"],
                    "{index}: {got} vs {expected}"
                );
                assert!(
                    close(&ours["score"], &theirs["score"]),
                    "{got} vs {expected}"
                );
            }
        }
    }

    let mut args = vec![
        "embed",
        "-m",
        &model,
        "--image-size",
        "32",
        "--pool",
        "mean",
        "-f",
        "jsonl",
    ];
    args.extend(paths.iter().map(String::as_str));
    let cli = vit(&args);
    assert!(cli.status.success(), "{}", stderr(&cli));
    let cli = jsonl(&stdout(&cli));
    for format in ["float", "base64"] {
        let body =
            json!({"input": inputs, "pool": "mean", "encoding_format": format, "model": "deit"});
        let (status, answer) = server.post_json("/v1/embeddings", &body, &[]);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["usage"]["images"], 3);
        assert_eq!(answer["model"], "deit");
        for (row, expected) in answer["data"].as_array().unwrap().iter().zip(&cli) {
            let values: Vec<f64> = match format {
                "float" => row["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
                _ => base64::engine::general_purpose::STANDARD
                    .decode(row["embedding"].as_str().unwrap())
                    .unwrap()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
            };
            let expected: Vec<f64> = expected["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(values.len(), expected.len());
            let diff = values
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-5, "{format}: {diff}");
        }
    }
    let (status, _) = server.curl("/health", &[]);
    assert_eq!(status, 200);
    let (_, metrics) = server.curl("/metrics", &[]);
    assert!(
        metrics.contains("vit_requests_total{endpoint=\"/v1/classify\",status=\"200\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("vit_images_total 12"), "{metrics}");
    let (status, logs) = server.stop();
    assert!(status.success(), "drained and exited 0: {status:?}");
    let line: Value =
        serde_json::from_str(logs.iter().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert!(
        line["status"].is_u64() && line["path"].is_string(),
        "{line}"
    );
}

#[test]
fn every_limit_is_a_clear_json_error() {
    let server = Server::start(
        &["-m", &deit(), "--image-size", "32", "--max-body-mb", "1"],
        &[],
    );
    let good = data_uri(&photos()[0]);
    let broken = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\n broken");
    let cases: [(Value, u16, &str); 6] = [
        (json!({"input": [good, broken]}), 400, "input 1: "),
        (
            json!({"input": [good], "top_k": "three"}),
            422,
            "invalid type",
        ),
        (
            json!({"input": [good], "surprise": 1}),
            422,
            "unknown field",
        ),
        (
            json!({"input": [good], "function": "max"}),
            422,
            "`function` is",
        ),
        (json!({"input": []}), 422, "`input` is empty"),
        (
            json!({"input": ["http://example.com/cat.png"]}),
            400,
            "URLs are not fetched",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = server.post_json("/v1/classify", &body, &[]);
        assert_eq!(got, status, "{answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{answer}"
        );
        assert!(
            error["type"].is_string() && error["code"].is_string(),
            "{answer}"
        );
    }
    let (status, answer) = server.post_json(
        "/v1/embeddings",
        &json!({"input": [good], "dimensions": 7}),
        &[],
    );
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = server.post_json(
        "/v1/embeddings",
        &json!({"input": "a cat", "modality": "text"}),
        &[],
    );
    assert_eq!(status, 422, "text without a text tower: {answer}");
    let (status, body) = server.curl(
        "/v1/classify",
        &["-H", "Content-Type: application/json", "-d", "{not json"],
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.curl("/nowhere", &[]);
    assert_eq!(status, 404, "{body}");

    // Over the body limit: 413, and the server goes on.
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'A'; 3 << 20]).unwrap();
    let data = format!("@{}", big.path().display());
    let (status, body) = server.curl(
        "/v1/classify",
        &["-H", "Content-Type: image/png", "--data-binary", &data],
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    let (status, _) = server.post_json("/v1/classify", &json!({"input": [good]}), &[]);
    assert_eq!(status, 200);
}

#[test]
fn a_key_guards_everything_but_health_and_is_never_logged() {
    let key = "s3cret-key-for-tests";
    let server = Server::start(
        &["-m", &deit(), "--image-size", "32"],
        &[("VIT_API_KEY", key)],
    );
    let body = json!({"input": [data_uri(&photos()[0])]});
    let bearer = format!("Authorization: Bearer {key}");
    for (extra, status) in [
        (vec![], 401),
        (vec!["-H", "Authorization: Bearer wrong"], 401),
        (vec!["-H", bearer.as_str()], 200),
    ] {
        let (got, answer) = server.post_json("/v1/classify", &body, &extra);
        assert_eq!(got, status, "{answer}");
    }
    assert_eq!(server.curl("/metrics", &[]).0, 401);
    assert_eq!(server.curl("/health", &[]).0, 200);
    let (_, logs) = server.stop();
    assert!(logs.iter().all(|line| !line.contains(key)), "{logs:?}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_sigterm_drains() {
    // One place in the queue; a batch waits 3 s for more images.
    let server = Server::start(
        &[
            "-m",
            &deit(),
            "--image-size",
            "32",
            "--queue",
            "1",
            "--max-wait-ms",
            "3000",
        ],
        &[],
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        json!({"input": [data_uri(&photos()[0])]}).to_string(),
    )
    .unwrap();
    let data = format!("@{}", file.path().display());
    let url = format!("{}/v1/classify", server.base);
    let first = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let (status, body) = server.curl(
        "/v1/classify",
        &[
            "-D",
            "-",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: 1"),
        "{body}"
    );
    assert!(body.contains("queue_full"), "{body}");
    // SIGTERM while the first request waits: it is still answered, then the server exits 0.
    terminate(&server.child);
    let first = first.wait_with_output().unwrap();
    let first = String::from_utf8_lossy(&first.stdout);
    assert!(first.trim_end().ends_with("200"), "{first}");
    let (status, logs) = server.stop();
    assert!(status.success(), "{status:?}: {logs:?}");
}

#[test]
fn image_text_models_classify_into_labels_and_embed_texts() {
    let clip = fixture("clip/clip_p16_s48").display().to_string();
    let server = Server::start(&["-m", &clip], &[]);
    let photo = photos()[2].display().to_string();
    let cli = vit(&[
        "classify",
        "-m",
        &clip,
        &photo,
        "--labels",
        "a cat,a dog,a car",
        "-f",
        "json",
    ]);
    assert!(cli.status.success(), "{}", stderr(&cli));
    let cli: Vec<Value> = serde_json::from_str(&stdout(&cli)).unwrap();
    let body = json!({"input": [data_uri(&photos()[2])], "labels": ["a cat", "a dog", "a car"]});
    let (status, answer) = server.post_json("/v1/classify", &body, &[]);
    assert_eq!(status, 200, "{answer}");
    for (ours, theirs) in answer["data"][0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cli[0]["predictions"].as_array().unwrap())
    {
        assert_eq!(ours["label"], theirs["label"]);
        assert!(
            close(&ours["score"], &theirs["score"]),
            "{ours} vs {theirs}"
        );
    }
    let (status, answer) = server.post_json(
        "/v1/classify",
        &json!({"input": [data_uri(&photos()[2])]}),
        &[],
    );
    assert_eq!(status, 422, "labels are needed: {answer}");

    let cli = vit(&["embed", "-m", &clip, "--text", "a photo of a cat"]);
    assert!(cli.status.success(), "{}", stderr(&cli));
    let expected = &jsonl(&stdout(&cli))[0]["embedding"];
    let body =
        json!({"input": [{"type": "text", "text": "a photo of a cat"}, data_uri(&photos()[2])]});
    let (status, answer) = server.post_json("/v1/embeddings", &body, &[]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["images"], 1);
    let got = answer["data"][0]["embedding"].as_array().unwrap();
    for (a, b) in got.iter().zip(expected.as_array().unwrap()) {
        assert!(close(a, b), "text embedding");
    }
}

/// Raw HTTP on a socket: `head` (request line and headers), then `body` bytes; the answer's
/// status line, or what the server did instead.
fn raw_request(base: &str, head: &str, body: &[u8]) -> String {
    let address = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before taking every byte.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn faults_cost_only_their_own_request() {
    let server = Server::start(
        &[
            "-m",
            &deit(),
            "--image-size",
            "32",
            "--max-body-mb",
            "2",
            "--body-timeout-s",
            "2",
        ],
        &[],
    );
    let good = json!({"input": [data_uri(&photos()[0])]});
    // A decompression bomb's header: refused before decoding, naming the input.
    let bomb = base64::engine::general_purpose::STANDARD.encode(common::png_bomb());
    let (status, answer) = server.post_json("/v1/classify", &json!({"input": [bomb]}), &[]);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input 0: "),
        "{answer}"
    );
    assert!(
        answer.to_string().contains("more than the limit"),
        "{answer}"
    );

    // A body that claims 1 GB: 413 after the first 2 MB, the rest never read.
    let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
                Content-Length: 1073741824\r\n\r\n";
    let status = raw_request(&server.base, head, &vec![0u8; 8 << 20]);
    assert!(status.contains(" 413 "), "{status}");

    // A client that sends a few bytes of its body and then nothing: 408 after the timeout,
    // while another client is answered meanwhile.
    let base = server.base.clone();
    let slow = std::thread::spawn(move || {
        let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
                    Content-Length: 1000\r\n\r\n";
        raw_request(&base, head, b"\x89PNG")
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, answer) = server.post_json("/v1/classify", &good, &[]);
    assert_eq!(status, 200, "{answer}");
    let slow = slow.join().unwrap();
    assert!(slow.contains(" 408 "), "{slow}");

    // A client that disconnects mid-upload.
    let address = server.base.strip_prefix("http://").unwrap().to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
                Content-Length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[0u8; 1000]).unwrap();
    drop(stream);

    // Still serving, and nothing was lost from the queue.
    let (status, answer) = server.post_json("/v1/classify", &good, &[]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.curl("/health", &[]).0, 200);
    let (_, metrics) = server.curl("/metrics", &[]);
    assert!(metrics.contains("vit_queue_images 0"), "{metrics}");
    let (status, _) = server.stop();
    assert!(status.success());
}
