//! `pronto ca ...` and `pronto module ...`: certificates for signers and
//! signalling peers, and signed module files (sign, inspect, verify).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use exec_env::ca::{self, CaOptions, KeyAlgorithm, Overwrite};
use exec_env::format::{self, FormatError, MAX_MODULE_LEN};
use exec_env::role::Role;
use exec_env::sign::{self, ModuleSigningKey};
use exec_env::trust::{self, TrustAnchors, utc};

/// Options of `pronto ca`.
#[derive(Debug, Args)]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA and a code-signing signer certificate (keys 0600) in DIR.
    Init {
        /// Directory for ca.pem, ca.key, signer.pem, signer.key (created if absent).
        #[arg(long)]
        dir: PathBuf,
        /// CA common name.
        #[arg(long, default_value = "Pronto operator CA")]
        name: String,
        /// Signer common name [default: "<NAME> module signer"].
        #[arg(long)]
        signer_name: Option<String>,
        /// Validity of the CA and the signer, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// A virtual subnet the signer's modules may govern (tenant signer);
        /// repeat for several. Without it the certificate does not restrict.
        #[arg(long = "tenant-subnet", value_name = "CIDR")]
        tenant_subnets: Vec<String>,
        /// A dNSName SAN for the signer certificate; repeat for several.
        #[arg(long = "signer-dns-name", value_name = "NAME")]
        signer_dns_names: Vec<String>,
        /// Signer key algorithm.
        #[arg(long, value_enum, default_value_t = AlgorithmArg::Ed25519)]
        signer_algorithm: AlgorithmArg,
        /// Replace existing files (new keys; the old ones are removed).
        #[arg(long)]
        force: bool,
    },
    /// Issue a TLS client+server certificate for a signalling peer or a
    /// management client.
    IssuePeer {
        /// CA directory (from `pronto ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// Node name: the certificate's dNSName SAN; files peer-<NAME>.pem/.key.
        #[arg(long)]
        name: String,
        /// The role the certificate carries (URI SAN urn:pronto:role:ROLE):
        /// `operator` may query and change modules through the management API,
        /// `viewer` may query; `router` and `host` have no management rights.
        /// Without it the certificate carries no role (no management rights
        /// unless a router lists its name in `[management] operators`/`viewers`).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
    /// Revoke certificates of the CA in DIR (module signers, peers): adds
    /// their serials to DIR/revoked and writes DIR/crl.pem over all of them.
    /// Routers read it through `[modules] crls` when they start; run it again
    /// without --serial/--cert to renew the CRL before --days run out (a
    /// stale CRL refuses every module its CA signed).
    Revoke {
        /// CA directory (from `pronto ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// A serial to revoke, hex as `pronto module inspect` prints it; repeat.
        #[arg(long = "serial", value_name = "HEX")]
        serials: Vec<String>,
        /// A certificate (PEM) to revoke; repeat.
        #[arg(long = "cert", value_name = "CERT.pem")]
        certs: Vec<PathBuf>,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

/// A certificate role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// Queries and module operations.
    Operator,
    /// Queries only.
    Viewer,
    /// A router (signalling); no management rights.
    Router,
    /// A host agent (signalling); no management rights.
    Host,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Operator => Self::Operator,
            RoleArg::Viewer => Self::Viewer,
            RoleArg::Router => Self::Router,
            RoleArg::Host => Self::Host,
        }
    }
}

/// Key algorithm on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AlgorithmArg {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256 with SHA-256.
    EcdsaP256,
}

impl From<AlgorithmArg> for KeyAlgorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Ed25519 => Self::Ed25519,
            AlgorithmArg::EcdsaP256 => Self::EcdsaP256,
        }
    }
}

/// Options of `pronto module`.
#[derive(Debug, Args)]
pub(crate) struct ModuleArgs {
    #[command(subcommand)]
    command: ModuleCommand,
}

#[derive(Debug, Subcommand)]
enum ModuleCommand {
    /// Embed a manifest and sign a core wasm module into one file.
    Sign {
        /// Signer private key, PKCS#8 PEM (e.g. signer.key).
        #[arg(long)]
        key: PathBuf,
        /// Signer certificate chain, PEM, signer first (e.g. signer.pem).
        #[arg(long)]
        chain: PathBuf,
        /// Manifest TOML to embed; omit if INPUT already carries one.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The wasm module.
        input: PathBuf,
        /// Where to write the signed module.
        #[arg(short, long)]
        output: PathBuf,
        /// Sign even if a certificate of the chain is expired or not yet valid
        /// (every router would refuse the module while it is).
        #[arg(long)]
        force: bool,
    },
    /// Show a module file's manifest, signer, validity, digest and size (no
    /// trust decision; works on unsigned files).
    Inspect {
        /// The module file.
        file: PathBuf,
    },
    /// Check a module file against trust anchors, as an environment would.
    Verify {
        /// CA certificate(s) to trust, PEM; repeat for several.
        #[arg(long = "trust", value_name = "CA.pem", required = true)]
        trust: Vec<PathBuf>,
        /// CRL(s), PEM; repeat for several.
        #[arg(long = "crl", value_name = "CRL.pem")]
        crls: Vec<PathBuf>,
        /// The module file.
        file: PathBuf,
    },
    /// On a running router (`--router URL`): load, swap, rollback, remove,
    /// bind, unbind.
    #[command(flatten)]
    Remote(crate::cli_query::RemoteOp),
}

/// Run `pronto ca ...`.
pub(crate) fn run_ca(args: &CaArgs) -> Result<()> {
    match &args.command {
        CaCommand::Init {
            dir,
            name,
            signer_name,
            days,
            tenant_subnets,
            signer_dns_names,
            signer_algorithm,
            force,
        } => {
            let mut opts = CaOptions::new(name, *days);
            if let Some(s) = signer_name {
                opts.signer_name.clone_from(s);
            }
            opts.tenant_subnets.clone_from(tenant_subnets);
            opts.signer_dns_names.clone_from(signer_dns_names);
            opts.signer_algorithm = (*signer_algorithm).into();
            opts.overwrite = if *force {
                Overwrite::Replace
            } else {
                Overwrite::Refuse
            };
            let paths = ca::init_ca(dir, &opts)
                .with_context(|| format!("creating a CA in {}", dir.display()))?;
            println!("CA \"{}\" created, valid {} days", opts.name, days);
            println!("  trust anchor   {}", paths.ca_cert.display());
            println!("  CA key (0600)  {}", paths.ca_key.display());
            println!("  signer cert    {}", paths.signer_cert.display());
            println!("  signer key     {}", paths.signer_key.display());
            if !opts.tenant_subnets.is_empty() {
                println!("  signer may govern {}", opts.tenant_subnets.join(", "));
            }
            println!(
                "sign with: pronto module sign --key {} --chain {} --manifest M.toml IN.wasm -o OUT.wasm",
                paths.signer_key.display(),
                paths.signer_cert.display()
            );
            Ok(())
        }
        CaCommand::Revoke {
            dir,
            serials,
            certs,
            days,
        } => revoke_cmd(dir, serials, certs, *days),
        CaCommand::IssuePeer { dir, name, role } => {
            let role = role.map(Role::from);
            let paths = ca::issue_peer_cert_as(dir, name, role).with_context(|| {
                format!(
                    "issuing a peer certificate for {name} from the CA in {}",
                    dir.display()
                )
            })?;
            let role = role.map_or("no role (no management rights)", Role::as_str);
            println!("peer certificate for {name}, role {role}");
            println!("  cert          {}", paths.cert.display());
            println!("  key (0600)    {}", paths.key.display());
            Ok(())
        }
    }
}

fn revoke_cmd(dir: &Path, serials: &[String], certs: &[PathBuf], days: u32) -> Result<()> {
    let mut all = serials.to_vec();
    for c in certs {
        let chain = sign::chain_from_pem_file(c)
            .with_context(|| format!("reading the certificate {}", c.display()))?;
        let first = chain
            .first()
            .with_context(|| format!("{} holds no certificate", c.display()))?;
        let info = trust::describe_certificate(first)
            .with_context(|| format!("{} does not parse", c.display()))?;
        println!("{}: {} (serial {})", c.display(), info.subject, info.serial);
        all.push(info.serial);
    }
    let r = exec_env::crl::revoke(dir, &all, days)
        .with_context(|| format!("revoking through the CA in {}", dir.display()))?;
    println!(
        "{} serial(s) revoked ({} new); CRL {} valid until {}",
        r.serials.len(),
        r.added,
        r.crl.display(),
        utc(r.next_update)
    );
    println!(
        "routers apply it at their next start with `crls = [\"{}\"]` in [modules]",
        r.crl.display()
    );
    Ok(())
}

/// Run `pronto module ...`.
pub(crate) fn run_module(args: &ModuleArgs) -> Result<()> {
    match &args.command {
        ModuleCommand::Sign {
            key,
            chain,
            manifest,
            input,
            output,
            force,
        } => sign_cmd(key, chain, manifest.as_deref(), input, output, *force),
        ModuleCommand::Inspect { file } => inspect_cmd(file),
        ModuleCommand::Verify { trust, crls, file } => verify_cmd(trust, crls, file),
        ModuleCommand::Remote(op) => crate::cli_query::run_remote_module(op),
    }
}

fn sign_cmd(
    key: &Path,
    chain: &Path,
    manifest: Option<&Path>,
    input: &Path,
    output: &Path,
    force: bool,
) -> Result<()> {
    let wasm = read_module(input)?;
    let unsigned = match manifest {
        Some(m) => {
            let text = std::fs::read_to_string(m)
                .with_context(|| format!("reading manifest {}", m.display()))?;
            let parsed = format::parse_manifest(&text)
                .with_context(|| format!("manifest {}", m.display()))?;
            format::embed_manifest(&wasm, &parsed)
                .with_context(|| format!("embedding {} into {}", m.display(), input.display()))?
        }
        None => wasm,
    };
    let key = ModuleSigningKey::from_pem_file(key)
        .with_context(|| format!("signing key {}", key.display()))?;
    let chain_path = chain;
    let chain = sign::chain_from_pem_file(chain)
        .with_context(|| format!("certificate chain {}", chain.display()))?;
    match sign::check_chain_validity(&chain, SystemTime::now()) {
        Ok(()) => {}
        Err(e) if force => eprintln!("warning (--force): {e}"),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("refusing to sign with {}", chain_path.display()));
        }
    }
    let signed = sign::sign_module(&unsigned, &key, chain)
        .with_context(|| format!("signing {}", input.display()))?;
    std::fs::write(output, &signed).with_context(|| format!("writing {}", output.display()))?;
    let file = format::parse(&signed).context("reading back the signed module")?;
    let m = file.manifest();
    println!(
        "signed {} {} ({}) with {}: {} ({} bytes, sha256 {})",
        m.name,
        m.version,
        kind(m),
        key.algorithm(),
        output.display(),
        signed.len(),
        trust::hex(&trust::digest(&signed))
    );
    Ok(())
}

fn inspect_cmd(path: &Path) -> Result<()> {
    let bytes = read_module(path)?;
    println!("file:       {}", path.display());
    println!("size:       {} bytes", bytes.len());
    println!("sha256:     {}", trust::hex(&trust::digest(&bytes)));
    let file = match format::parse(&bytes) {
        Ok(f) => f,
        Err(FormatError::MissingManifest) => {
            println!("manifest:   none (a bare wasm module, not a signed Pronto module file)");
            println!("signature:  none");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("{} is malformed", path.display())),
    };
    let m = file.manifest();
    println!("module:     {} {} ({})", m.name, m.version, kind(m));
    println!(
        "capabilities: {}",
        list(m.capabilities.iter().map(|c| c.as_str()))
    );
    println!("subnets:    {}", list(m.subnets.iter().map(String::as_str)));
    if !m.description.is_empty() {
        println!("description: {}", m.description);
    }
    let Some(sig) = file.signature() else {
        println!("signature:  none (UNSIGNED: every environment will refuse it)");
        return Ok(());
    };
    println!(
        "signature:  {}, over the first {} bytes, chain of {}",
        sig.algorithm,
        file.signed_bytes().len(),
        sig.chain.len()
    );
    let now = SystemTime::now();
    for (i, cert) in sig.chain.iter().enumerate() {
        let role = if i == 0 { "signer" } else { "intermediate" };
        match trust::describe_certificate(cert) {
            Ok(info) => {
                let state = if now < info.not_before {
                    "NOT YET VALID"
                } else if now >= info.not_after {
                    "EXPIRED"
                } else {
                    "valid now"
                };
                println!("  [{i}] {role}: {}", info.subject);
                println!("      issuer:   {}", info.issuer);
                println!("      serial:   {}", info.serial);
                println!(
                    "      validity: {} .. {} ({state})",
                    utc(info.not_before),
                    utc(info.not_after)
                );
                if !info.subnets.is_empty() {
                    println!("      may govern: {}", info.subnets.join(", "));
                }
            }
            Err(e) => println!("  [{i}] {role}: unreadable certificate: {e}"),
        }
    }
    println!("trust:      not checked here; use `pronto module verify --trust CA.pem`");
    Ok(())
}

fn verify_cmd(trust_files: &[PathBuf], crls: &[PathBuf], path: &Path) -> Result<()> {
    let mut anchors = TrustAnchors::empty();
    for t in trust_files {
        anchors
            .add_pem_file(t)
            .with_context(|| format!("trust anchors {}", t.display()))?;
    }
    for c in crls {
        anchors
            .add_crl_pem_file(c)
            .with_context(|| format!("CRL {}", c.display()))?;
    }
    let bytes = read_module(path)?;
    match trust::verify(&bytes, &anchors, SystemTime::now()) {
        Ok(m) => {
            println!(
                "OK: {} {} ({}) verified",
                m.manifest.name,
                m.manifest.version,
                kind(&m.manifest)
            );
            println!("  signer:   {}", m.signer.subject);
            println!("  issuer:   {}", m.signer.issuer);
            println!(
                "  validity: {} .. {}",
                utc(m.signer.not_before),
                utc(m.signer.not_after)
            );
            if !m.signer.subnets.is_empty() {
                println!("  may govern: {}", m.signer.subnets.join(", "));
            }
            println!("  sha256:   {}", trust::hex(&m.digest));
            Ok(())
        }
        Err(e) => bail!("{} REFUSED ({}): {e}", path.display(), e.failure().as_str()),
    }
}

fn kind(m: &exec_env::manifest::Manifest) -> &'static str {
    match m.kind {
        exec_env::manifest::ModuleKind::Policy => "policy",
        exec_env::manifest::ModuleKind::Scheduler => "scheduler",
        exec_env::manifest::ModuleKind::Signaling => "signaling",
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

/// Read a module file, refusing anything over the format's size bound.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > MAX_MODULE_LEN {
        bail!("{} is larger than {MAX_MODULE_LEN} bytes", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    /// The two command groups as `main.rs` mounts them.
    #[derive(Debug, Parser)]
    enum Cli {
        Ca(CaArgs),
        Module(ModuleArgs),
    }

    fn run(args: &[&str]) -> Result<()> {
        match Cli::try_parse_from(std::iter::once("pronto").chain(args.iter().copied()))? {
            Cli::Ca(a) => run_ca(&a),
            Cli::Module(a) => run_module(&a),
        }
    }

    #[test]
    fn ca_init_sign_inspect_verify_by_command_line() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("pronto-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let p = |name: &str| dir.join(name).display().to_string();
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("slr-policy-wasm");
        let wasm = policies
            .join("modules/least_load.wasm")
            .display()
            .to_string();
        let manifest = policies
            .join("manifests/least_load.toml")
            .display()
            .to_string();

        run(&[
            "ca",
            "init",
            "--dir",
            &p("ca"),
            "--tenant-subnet",
            "192.200.0.0/16",
        ])?;
        assert!(
            run(&["ca", "init", "--dir", &p("ca")]).is_err(),
            "overwrote a CA"
        );
        run(&["ca", "init", "--dir", &p("other"), "--name", "Other CA"])?;
        run(&[
            "ca",
            "issue-peer",
            "--dir",
            &p("ca"),
            "--name",
            "site-a.example",
        ])?;
        run(&[
            "ca",
            "issue-peer",
            "--dir",
            &p("ca"),
            "--name",
            "ops.example",
            "--role",
            "operator",
        ])?;
        let ops = std::fs::read(dir.join("ca/peer-ops.example.pem"))?;
        let ops = sign::chain_from_pem(&ops)?;
        let roles = exec_env::role::CertificateRoles::from_der(&ops[0])?;
        assert_eq!(roles.roles, vec![Role::Operator]);
        assert!(
            run(&[
                "ca",
                "issue-peer",
                "--dir",
                &p("ca"),
                "--name",
                "x.example",
                "--role",
                "admin"
            ])
            .is_err(),
            "unknown role accepted"
        );
        let sign = [
            "module",
            "sign",
            "--key",
            &p("ca/signer.key"),
            "--chain",
            &p("ca/signer.pem"),
            "--manifest",
            &manifest,
            &wasm,
            "-o",
            &p("signed.wasm"),
        ];
        run(&sign)?;
        run(&["module", "inspect", &p("signed.wasm")])?;
        run(&["module", "inspect", &wasm])?;
        run(&[
            "module",
            "verify",
            "--trust",
            &p("ca/ca.pem"),
            &p("signed.wasm"),
        ])?;
        let refused = run(&[
            "module",
            "verify",
            "--trust",
            &p("other/ca.pem"),
            &p("signed.wasm"),
        ])
        .expect_err("foreign CA trusted");
        assert!(refused.to_string().contains("untrusted_chain"), "{refused}");
        let unsigned = run(&["module", "verify", "--trust", &p("ca/ca.pem"), &wasm])
            .expect_err("bare wasm verified");
        assert!(unsigned.to_string().contains("format"), "{unsigned}");
        // --trust is required: no anchors on the command line is a usage error.
        assert!(run(&["module", "verify", &p("signed.wasm")]).is_err());
        // Revoking the signer by its certificate: the module no longer verifies
        // with the CRL; revoking a peer by serial keeps the signer's entry.
        run(&[
            "ca",
            "revoke",
            "--dir",
            &p("ca"),
            "--cert",
            &p("ca/signer.pem"),
        ])?;
        let verify_crl = [
            "module",
            "verify",
            "--trust",
            &p("ca/ca.pem"),
            "--crl",
            &p("ca/crl.pem"),
            &p("signed.wasm"),
        ];
        let revoked = run(&verify_crl).expect_err("revoked signer verified");
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        run(&["ca", "revoke", "--dir", &p("ca"), "--serial", "0a:0b"])?;
        assert!(
            run(&verify_crl).is_err(),
            "the signer's revocation was lost"
        );
        assert!(
            run(&["ca", "revoke", "--dir", &p("ca"), "--serial", "xyz"]).is_err(),
            "a bad serial accepted"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn sign_refuses_an_expired_or_future_signer_unless_forced() -> Result<()> {
        use exec_env::ca::{CertificateAuthority, SignerRequest, Validity};
        let dir = std::env::temp_dir().join(format!("pronto-cli-exp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let p = |name: &str| dir.join(name).display().to_string();
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("slr-policy-wasm");
        let wasm = policies
            .join("modules/least_load.wasm")
            .display()
            .to_string();
        let manifest = policies
            .join("manifests/least_load.toml")
            .display()
            .to_string();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let ca_validity = Validity {
            not_before: now - 30 * day,
            not_after: now + 30 * day,
        };
        let ca = CertificateAuthority::generate("Old CA", ca_validity, KeyAlgorithm::Ed25519)?;
        for (file, validity) in [
            (
                "expired",
                Validity {
                    not_before: now - 20 * day,
                    not_after: now - 10 * day,
                },
            ),
            (
                "future",
                Validity {
                    not_before: now + 10 * day,
                    not_after: now + 20 * day,
                },
            ),
        ] {
            let signer = ca.issue_signer(&SignerRequest::new(file, validity))?;
            std::fs::write(dir.join(format!("{file}.pem")), &signer.cert_pem)?;
            std::fs::write(dir.join(format!("{file}.key")), &signer.key_pem)?;
            let (key, chain, out) = (
                p(&format!("{file}.key")),
                p(&format!("{file}.pem")),
                p(&format!("{file}.wasm")),
            );
            let args = [
                "module",
                "sign",
                "--key",
                &key,
                "--chain",
                &chain,
                "--manifest",
                &manifest,
                &wasm,
                "-o",
                &out,
            ];
            let e = run(&args).expect_err("signed with an invalid signer");
            let e = format!("{e:#}");
            eprintln!("{e}");
            assert!(e.contains("--force"), "{e}");
            assert!(!e.contains("tv_sec") && !e.contains("SystemTime"), "{e}");
            let date = utc(if file == "expired" {
                validity.not_after
            } else {
                validity.not_before
            });
            assert!(e.contains(&date), "{e} names {date}");
            assert!(!Path::new(&out).exists(), "nothing written");
            let mut forced = args.to_vec();
            forced.push("--force");
            run(&forced)?;
            assert!(Path::new(&out).exists());
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
