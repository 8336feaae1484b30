//! Generates a `.medusa/server/public`-like tree for the secret scan: bundle-like files
//! (long minified lines, source maps, JSON, CSS with data URIs, binaries), some carrying
//! one planted secret each and some carrying only decoys that must not be flagged.
//!
//! Shared by the end-to-end fixture test (small tree, recall and false positives) and
//! the scan benchmark (500+ MB, against peer scanners). Deterministic for a seed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The job secret variable planted in the tree, as the agent gets it.
pub const JOB_SECRET_NAME: &str = "JWT_SECRET";

pub struct PublicTree {
    pub root: PathBuf,
    /// Relative path → the kind of secret planted in it.
    pub planted: BTreeMap<String, &'static str>,
    /// Relative paths holding only decoys.
    pub decoys: Vec<String>,
    pub job_secret: String,
    pub bytes: u64,
}

const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const VLQ: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn pick(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pem_body(rng: &mut StdRng, bytes: usize, newline: &str) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
    let encoded = b64(&raw);
    encoded
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect::<Vec<_>>()
        .join(newline)
}

/// Each kind of secret the scan must find, as it appears in a built file. `\n` inside
/// JS strings is the two-character escape.
fn secret(kind: &'static str, rng: &mut StdRng, job_secret: &str) -> String {
    match kind {
        "pem-rsa" => format!(
            "const key=\"-----BEGIN RSA PRIVATE KEY-----\\n{}\\n-----END RSA PRIVATE KEY-----\";",
            pem_body(rng, 1190, "\\n")
        ),
        "pem-ec" => format!(
            "var k='-----BEGIN EC PRIVATE KEY-----\\n{}\\n-----END EC PRIVATE KEY-----';",
            pem_body(rng, 121, "\\n")
        ),
        "pem-openssh" => format!(
            "`-----BEGIN OPENSSH PRIVATE KEY-----\\n{}\\n-----END OPENSSH PRIVATE KEY-----`",
            pem_body(rng, 400, "\\n")
        ),
        "pem-pkcs8" => format!(
            "{{\"key\":\"-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n\"}}",
            pem_body(rng, 1216, "\\n")
        ),
        "aws-access-key-id" => format!("accessKeyId:\"AKIA{}\"", pick(rng, BASE32, 16)),
        "aws-secret-access-key" => format!(
            "aws_secret_access_key=\"{}\"",
            pick(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+", 40)
        ),
        "stripe-live" => format!("stripe(\"sk_live_{}\")", pick(rng, BASE62, 99)),
        "stripe-test" => format!("stripe(\"sk_test_{}\")", pick(rng, BASE62, 24)),
        "stripe-restricted" => format!("{{key:\"rk_live_{}\"}}", pick(rng, BASE62, 99)),
        "stripe-webhook" => format!("WEBHOOK=\"whsec_{}\"", pick(rng, BASE62, 32)),
        "medusa-secret-key" => format!("headers:{{\"x-medusa-access-token\":\"sk_{}\"}}", pick(rng, HEX, 64)),
        "github-classic" => format!("auth:\"ghp_{}\"", pick(rng, BASE62, 36)),
        "github-fine-grained" => format!(
            "auth:\"github_pat_{}_{}\"",
            pick(rng, BASE62, 22),
            pick(rng, BASE62, 59)
        ),
        "github-oauth" => format!("t=\"gho_{}\"", pick(rng, BASE62, 36)),
        "slack-token" => format!(
            "SLACK=\"xoxb-{}-{}-{}\"",
            pick(rng, b"0123456789", 11),
            pick(rng, b"0123456789", 13),
            pick(rng, BASE62, 24)
        ),
        "slack-webhook" => format!(
            "fetch(\"https://hooks.slack.com/services/T{}/B{}/{}\")",
            pick(rng, BASE32, 8),
            pick(rng, BASE32, 10),
            pick(rng, BASE62, 24)
        ),
        "google-api-key" => format!("maps:\"AIza{}\"", pick(rng, BASE62, 35)),
        "google-oauth-secret" => format!("client:\"GOCSPX-{}\"", pick(rng, BASE62, 28)),
        "gcp-service-account" => format!(
            "{{\"type\": \"service_account\", \"project_id\": \"shop-prod\", \"private_key_id\": \"{}\", \"private_key\": \"-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n\", \"client_email\": \"ci@shop-prod.iam.gserviceaccount.com\"}}",
            pick(rng, HEX, 40),
            pem_body(rng, 1216, "\\n")
        ),
        "sendgrid" => format!(
            "sg=\"SG.{}.{}\"",
            pick(rng, BASE62, 22),
            pick(rng, BASE62, 43)
        ),
        "twilio" => format!("twilio(\"SK{}\")", pick(rng, HEX, 32)),
        "openai" => format!("new OpenAI({{apiKey:\"sk-proj-{}\"}})", pick(rng, BASE62, 120)),
        "npm-token" => format!("NPM=\"npm_{}\"", pick(rng, BASE62, 36)),
        "jwt" => {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
                "{{\"sub\":\"{}\",\"role\":\"service_role\",\"iat\":1700000000}}",
                pick(rng, HEX, 12)
            ));
            format!(
                "Authorization:\"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.{}\"",
                pick(rng, BASE62, 43)
            )
        }
        "postgres-url" => format!(
            "DATABASE_URL:\"postgres://medusa:{}@db.prod.internal:5432/medusa\"",
            pick(rng, BASE62, 20)
        ),
        "redis-url" => format!("redis:\"redis://default:{}@cache.internal:6379\"", pick(rng, BASE62, 24)),
        "mongodb-url" => format!(
            "mongo=\"mongodb+srv://shop:{}@cluster0.abcde.mongodb.net/shop\"",
            pick(rng, BASE62, 16)
        ),
        "https-password-url" => format!("api:\"https://deploy:{}@api.myshop.io/v1\"", pick(rng, BASE62, 18)),
        "basic-auth" => format!(
            "headers:{{Authorization:\"Basic {}\"}}",
            b64(format!("admin:{}", pick(rng, BASE62, 16)).as_bytes())
        ),
        "generic-secret" => format!("config={{client_secret:\"{}\"}}", pick(rng, BASE62, 32)),
        "generic-password" => format!(
            "{{\"smtp_password\": \"{}-{}\"}}",
            pick(rng, BASE62, 10),
            pick(rng, BASE62, 10)
        ),
        "job-secret-literal" => format!("const s=\"{job_secret}\";"),
        "job-secret-base64" => format!("atob(\"{}\")", b64(format!("jwt={job_secret}").as_bytes())),
        other => panic!("unknown kind {other}"),
    }
}

/// Kinds planted inside bundle content.
pub const CONTENT_KINDS: &[&str] = &[
    "pem-rsa",
    "pem-ec",
    "pem-openssh",
    "pem-pkcs8",
    "aws-access-key-id",
    "aws-secret-access-key",
    "stripe-live",
    "stripe-test",
    "stripe-restricted",
    "stripe-webhook",
    "medusa-secret-key",
    "github-classic",
    "github-fine-grained",
    "github-oauth",
    "slack-token",
    "slack-webhook",
    "google-api-key",
    "google-oauth-secret",
    "gcp-service-account",
    "sendgrid",
    "twilio",
    "openai",
    "npm-token",
    "jwt",
    "postgres-url",
    "redis-url",
    "mongodb-url",
    "https-password-url",
    "basic-auth",
    "generic-secret",
    "generic-password",
];

/// Kinds only Kiln can find: the job's own secret variable.
pub const JOB_SECRET_KINDS: &[&str] = &["job-secret-literal", "job-secret-base64"];

/// Things that look like secrets and are not.
fn decoy(index: usize, rng: &mut StdRng) -> String {
    match index % 16 {
        0 => format!("Medusa({{publishableKey:\"pk_{}\"}})", pick(rng, HEX, 64)),
        1 => format!("loadStripe(\"pk_live_{}\")", pick(rng, BASE62, 99)),
        2 => format!(
            "<script src=\"/a.js\" integrity=\"sha384-{}\" crossorigin></script>",
            b64(&(0..48).map(|_| rng.random()).collect::<Vec<u8>>())
        ),
        3 => format!(
            "{{id:\"prod_01{}\",variant:\"variant_01{}\",uuid:\"{}-{}-4{}-a{}-{}\"}}",
            pick(rng, BASE32, 24),
            pick(rng, BASE32, 24),
            pick(rng, HEX, 8),
            pick(rng, HEX, 4),
            pick(rng, HEX, 3),
            pick(rng, HEX, 3),
            pick(rng, HEX, 12)
        ),
        4 => "const example={accessKeyId:\"AKIAIOSFODNN7EXAMPLE\",secretAccessKey:\"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"};".to_owned(),
        5 => "{\"apiKey\":\"your-secret-here\",\"password\":\"xxxxxxxxxxxxxxxx\",\"token\":\"<redacted>\",\"secret\":\"${STRIPE_API_KEY}\"}".to_owned(),
        6 => format!(
            "-----BEGIN PUBLIC KEY-----\\n{}\\n-----END PUBLIC KEY-----",
            pem_body(rng, 294, "\\n")
        ),
        7 => format!(
            "-----BEGIN CERTIFICATE-----\\n{}\\n-----END CERTIFICATE-----",
            pem_body(rng, 900, "\\n")
        ),
        8 => "fetch(\"https://api.shop.example/store/products?limit=20\");a=\"postgres://localhost/medusa\";b=\"redis://cache:6379\"".to_owned(),
        9 => "jwtSecret:process.env.JWT_SECRET||\"supersecret\",cookieSecret:process.env.COOKIE_SECRET".to_owned(),
        10 => format!(
            ".logo{{background:url(data:image/png;base64,{})}}",
            b64(&(0..6000).map(|_| rng.random()).collect::<Vec<u8>>())
        ),
        11 => format!("import\"./index-{}.js\";import\"./vendor-{}.css\"", pick(rng, BASE62, 8), pick(rng, HEX, 8)),
        12 => "{\"password\":\"Password\",\"passwordHint\":\"At least 8 characters\",\"token_expired\":\"Your session token has expired\"}".to_owned(),
        13 => "stripe(\"sk_test_4eC39HqLyjWDarjtT1zdp7dc\")".to_owned(),
        14 => "postgres://user:password@localhost:5432/medusa https://user:${PASSWORD}@host".to_owned(),
        _ => format!("sourceMappingURL=data:application/json;base64,{}", b64(format!("{{\"version\":3,\"mappings\":\"{}\"}}", pick(rng, VLQ, 400)).as_bytes())),
    }
}

/// Minified-bundle text: real JavaScript (the host's npm) with its newlines removed.
pub fn seed_javascript() -> String {
    let root = std::process::Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| PathBuf::from(s.trim()).join("npm"))
        .filter(|path| path.is_dir())
        .expect("the host's npm (for realistic JavaScript to scan)");
    let mut text = String::new();
    for entry in walkdir(&root) {
        if entry.extension().is_some_and(|e| e == "js") {
            if let Ok(source) = fs::read_to_string(&entry) {
                text.push_str(&source);
                text.push(';');
            }
        }
        if text.len() > 16 << 20 {
            break;
        }
    }
    text
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn minified(seed: &str, rng: &mut StdRng, len: usize) -> String {
    let start = rng.random_range(0..seed.len().saturating_sub(len).max(1));
    let mut start = start;
    while !seed.is_char_boundary(start) {
        start += 1;
    }
    let mut end = (start + len).min(seed.len());
    while !seed.is_char_boundary(end) {
        end -= 1;
    }
    seed[start..end].replace(['\n', '\r'], " ")
}

fn json_escape(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn source_map(seed: &str, rng: &mut StdRng, len: usize, planted: Option<&str>) -> String {
    let mut source = seed_lines(seed, rng, len / 2);
    if let Some(secret) = planted {
        let at = source.len() / 2;
        let at = (at..source.len())
            .find(|i| source.is_char_boundary(*i))
            .unwrap_or(0);
        source.insert_str(at, &format!("\n{secret}\n"));
    }
    format!(
        "{{\"version\":3,\"file\":\"index.js\",\"sources\":[\"../src/index.ts\"],\"sourcesContent\":[{}],\"mappings\":\"{}\"}}",
        json_escape(&source),
        pick(rng, VLQ, len / 2)
    )
}

fn seed_lines(seed: &str, rng: &mut StdRng, len: usize) -> String {
    let mut start = rng.random_range(0..seed.len().saturating_sub(len).max(1));
    while !seed.is_char_boundary(start) {
        start += 1;
    }
    let mut end = (start + len).min(seed.len());
    while !seed.is_char_boundary(end) {
        end -= 1;
    }
    seed[start..end].to_owned()
}

fn binary(rng: &mut StdRng, len: usize, magic: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    bytes.extend((0..len).map(|_| rng.random::<u8>()));
    bytes
}

/// Builds a tree of about `target_bytes` under `root`.
pub fn generate(root: &Path, target_bytes: u64, seed: u64) -> PublicTree {
    let js = seed_javascript();
    let mut rng = StdRng::seed_from_u64(seed);
    let job_secret = format!("jwt-{}", pick(&mut rng, BASE62, 28));
    let assets = root.join("admin/assets");
    fs::create_dir_all(&assets).unwrap();
    let mut tree = PublicTree {
        root: root.to_owned(),
        planted: BTreeMap::new(),
        decoys: Vec::new(),
        job_secret: job_secret.clone(),
        bytes: 0,
    };
    let write = |tree: &mut PublicTree, relative: &str, bytes: &[u8]| {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        tree.bytes += bytes.len() as u64;
    };

    // Planted: each kind in a minified bundle (secret mid-line), and in a source map.
    let all_kinds: Vec<&'static str> = CONTENT_KINDS
        .iter()
        .chain(JOB_SECRET_KINDS)
        .copied()
        .collect();
    for (i, kind) in all_kinds.iter().enumerate() {
        let secret_text = secret(kind, &mut rng, &job_secret);
        let before = minified(&js, &mut rng, 96 << 10);
        let after = minified(&js, &mut rng, 96 << 10);
        let relative = format!("admin/assets/chunk-{i:03}-{}.js", pick(&mut rng, BASE62, 8));
        write(
            &mut tree,
            &relative,
            format!("{before};{secret_text};{after}").as_bytes(),
        );
        tree.planted.insert(relative, kind);
        let relative = format!(
            "admin/assets/chunk-{i:03}-{}.js.map",
            pick(&mut rng, BASE62, 8)
        );
        let map = source_map(&js, &mut rng, 128 << 10, Some(&secret_text));
        write(&mut tree, &relative, map.as_bytes());
        tree.planted.insert(relative, kind);
    }
    // Files that must not be public by their name or kind.
    let env = format!(
        "STRIPE_API_KEY=sk_live_{}\nNODE_ENV=production\n",
        pick(&mut rng, BASE62, 40)
    );
    write(&mut tree, ".env", env.as_bytes());
    tree.planted.insert(".env".to_owned(), "env-file");
    let npmrc = format!(
        "//registry.npmjs.org/:_authToken=npm_{}\n",
        pick(&mut rng, BASE62, 36)
    );
    write(&mut tree, "uploads/.npmrc", npmrc.as_bytes());
    tree.planted.insert("uploads/.npmrc".to_owned(), "npmrc");
    let key = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
        pem_body(&mut rng, 1190, "\n")
    );
    write(&mut tree, "certs/server.key", key.as_bytes());
    tree.planted
        .insert("certs/server.key".to_owned(), "pem-file");
    let openssh = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        pem_body(&mut rng, 400, "\n")
    );
    write(&mut tree, "backup/id_ed25519", openssh.as_bytes());
    tree.planted
        .insert("backup/id_ed25519".to_owned(), "ssh-key-file");

    // Decoy-only files.
    for i in 0..32 {
        let text = format!(
            "{};{};{}",
            minified(&js, &mut rng, 32 << 10),
            decoy(i, &mut rng),
            minified(&js, &mut rng, 32 << 10)
        );
        let relative = format!("admin/assets/decoy-{i:02}.js");
        write(&mut tree, &relative, text.as_bytes());
        tree.decoys.push(relative);
    }
    write(
        &mut tree,
        ".env.example",
        b"STRIPE_API_KEY=\nJWT_SECRET=supersecret\n",
    );
    tree.decoys.push(".env.example".to_owned());

    // Filler up to the target size: bundles, source maps, JSON, CSS, binaries.
    let mut n = 0usize;
    while tree.bytes < target_bytes {
        let id = pick(&mut rng, BASE62, 8);
        match n % 20 {
            0..=8 => {
                let len = rng.random_range(256 << 10..3 << 20);
                let text = minified(&js, &mut rng, len);
                write(
                    &mut tree,
                    &format!("admin/assets/index-{n:05}-{id}.js"),
                    text.as_bytes(),
                );
            }
            9..=15 => {
                let len = rng.random_range(256 << 10..3 << 20);
                let map = source_map(&js, &mut rng, len, None);
                write(
                    &mut tree,
                    &format!("admin/assets/index-{n:05}-{id}.js.map"),
                    map.as_bytes(),
                );
            }
            16 => {
                let entries: BTreeMap<String, String> = (0..2000)
                    .map(|k| {
                        (
                            format!("key_{k}_{}", pick(&mut rng, BASE62, 6)),
                            minified(&js, &mut rng, 60),
                        )
                    })
                    .collect();
                let json = serde_json::to_string_pretty(&entries).unwrap();
                write(
                    &mut tree,
                    &format!("admin/locales/{n:05}-{id}.json"),
                    json.as_bytes(),
                );
            }
            17 => {
                let image = b64(&(0..(64 << 10)).map(|_| rng.random()).collect::<Vec<u8>>());
                let css =
                    format!(".a{{color:red}}.b{{background:url(data:image/png;base64,{image})}}");
                write(
                    &mut tree,
                    &format!("admin/assets/style-{n:05}-{id}.css"),
                    css.as_bytes(),
                );
            }
            18 => {
                let png = binary(&mut rng, 512 << 10, b"\x89PNG\r\n\x1a\n");
                write(
                    &mut tree,
                    &format!("admin/assets/img-{n:05}-{id}.png"),
                    &png,
                );
            }
            _ => {
                let font = binary(&mut rng, 128 << 10, b"wOF2");
                write(
                    &mut tree,
                    &format!("admin/assets/font-{n:05}-{id}.woff2"),
                    &font,
                );
            }
        }
        n += 1;
    }
    tree
}
