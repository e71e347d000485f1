//! PXE boot for real (issue 13): a real `qs serve` serves the production image built by
//! `images/build` (images/out/), and a QEMU guest (software emulation) boots it by network with
//! its NIC's own iPXE ROM. QEMU's user network hands iPXE a one-line script over TFTP that
//! chains to the controller (`http://10.0.2.2:PORT/boot/ipxe`, the host's loopback as the guest
//! sees it); the image boots, gets a lease, and its agent registers. The inventory must state
//! exactly the hardware QEMU was given, the MercuryId must be the one the spec derives from the
//! UUID, and a capability call must come back through the controller. Then the host is marked
//! `local`, the guest is reset, and the controller must answer its next boot request with the
//! local-disk script.
//!
//! Needs qemu-system-x86_64, Debian's ipxe-qemu ROMs and a built image: `tests/run` builds the
//! image first (`images/build`). Without them the test fails, saying what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use qs_tests::{repo_root, wait_until, Controller};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The hardware QEMU gives the guest; the inventory must say exactly this.
const UUID: &str = "7c6f1e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
const SYS_VENDOR: &str = "Quicksilver";
const PRODUCT: &str = "QS-PXE";
const PRODUCT_VERSION: &str = "2.0";
const PRODUCT_SERIAL: &str = "QSP-0001";
const SKU: &str = "QSP-SKU-1";
const FAMILY: &str = "QS PXE";
const CHASSIS_VERSION: &str = "C2";
const CHASSIS_SERIAL: &str = "QSPC-0001";
const CHASSIS_ASSET: &str = "QSPC-ASSET-1";
const CPUS: u64 = 2;
const MEMORY_MIB: u64 = 768;
const MACS: [&str; 2] = ["52:54:00:51:00:01", "52:54:00:51:00:02"];
/// name in the guest, size, QEMU device, serial.
const DISKS: [(&str, u64, &str, &str); 2] = [
    ("sda", 2 << 30, "sata", "QSP-SATA-0"),
    ("nvme0n1", 3 << 30, "nvme", "QSP-NVME-1"),
];

/// The serial console, line by line, with when each line arrived.
#[derive(Clone, Default)]
struct Console {
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Console {
    /// Reads `child`'s stdout into the console (ANSI sequences and carriage returns removed) and
    /// into `log`.
    fn capture(&self, child: &mut Child, started: Instant, log: PathBuf) {
        let stdout = child.stdout.take().expect("QEMU stdout is piped");
        let lines = self.lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut file = tokio::fs::File::create(&log).await.ok();
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = strip_ansi(&String::from_utf8_lossy(&raw));
                let at = started.elapsed();
                if let Some(f) = file.as_mut() {
                    let _ = f
                        .write_all(format!("{:8.3} {text}\n", at.as_secs_f64()).as_bytes())
                        .await;
                }
                lines.lock().unwrap().push((at, text));
            }
        });
    }

    /// When the first line containing `needle` (after `after`) arrived.
    fn find(&self, needle: &str, after: Duration) -> Option<Duration> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(at, line)| *at >= after && line.contains(needle))
            .map(|(at, _)| *at)
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|(at, l)| format!("{:8.3} {l}", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// What must exist before anything starts; a missing piece fails the test by name.
fn prerequisites() -> anyhow::Result<PathBuf> {
    let out = repo_root().join("images/out");
    for file in ["vmlinuz", "initramfs.img", "image.json"] {
        if !out.join(file).is_file() {
            bail!(
                "{} is missing: build the production image first (images/build; tests/run does)",
                out.join(file).display()
            );
        }
    }
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (images/build installs it)");
        }
    }
    if !Path::new("/usr/lib/ipxe/qemu/pxe-virtio.rom").is_file()
        && !Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").is_file()
    {
        bail!("QEMU's iPXE ROMs are missing: install ipxe-qemu (images/build does)");
    }
    Ok(out)
}

fn expected_mercury_id() -> String {
    let sources = qs_proto::mercury_id::IdSources {
        product_uuid: Some(UUID.to_owned()),
        ..Default::default()
    };
    qs_proto::mercury_id::derive(&sources)
        .expect("the UUID yields a MercuryId")
        .id
        .as_str()
        .to_owned()
}

async fn start_qemu(dir: &Path, http_port: u16) -> anyhow::Result<(Child, Console, Instant)> {
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp)?;
    // What a site's DHCP would hand out as the boot file: chain to the controller.
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!("#!ipxe\nchain http://10.0.2.2:{http_port}/boot/ipxe\n"),
    )?;
    let mut disks = Vec::new();
    for (i, (_, size, bus, serial)) in DISKS.iter().enumerate() {
        let image = dir.join(format!("d{i}.qcow2"));
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(size.to_string())
            .status()
            .await
            .context("cannot run qemu-img")?;
        if !status.success() {
            bail!("qemu-img create failed for {}", image.display());
        }
        disks.push("-drive".to_owned());
        disks.push(format!("if=none,id=d{i},file={}", image.display()));
        disks.push("-device".to_owned());
        disks.push(match *bus {
            "sata" => format!("ide-hd,drive=d{i},bus=ide.0,serial={serial}"),
            _ => format!("nvme,drive=d{i},serial={serial}"),
        });
    }
    let monitor = dir.join("monitor.sock");
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-machine", "q35", "-cpu", "max"])
        .args(["-smp", &CPUS.to_string(), "-m", &MEMORY_MIB.to_string()])
        .args(["-nographic", "-serial", "stdio", "-monitor"])
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .args(["-uuid", UUID])
        .args([
            "-smbios",
            &format!(
                "type=1,manufacturer={SYS_VENDOR},product={PRODUCT},version={PRODUCT_VERSION},serial={PRODUCT_SERIAL},sku={SKU},family={FAMILY}"
            ),
            "-smbios",
            &format!(
                "type=3,manufacturer={SYS_VENDOR},version={CHASSIS_VERSION},serial={CHASSIS_SERIAL},asset={CHASSIS_ASSET}"
            ),
        ])
        // Both NICs on QEMU's user network; the first boots (TFTP serves the chain script).
        .args([
            "-netdev",
            &format!("user,id=n0,tftp={},bootfile=boot.ipxe", tftp.display()),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", MACS[0]),
            "-netdev",
            "user,id=n1",
            "-device",
            &format!("virtio-net-pci,netdev=n1,mac={}", MACS[1]),
        ])
        .args(&disks)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let console = Console::default();
    console.capture(&mut child, started, dir.join("console.log"));
    Ok((child, console, started))
}

/// One command on QEMU's human monitor.
async fn monitor(dir: &Path, command: &str) -> anyhow::Result<()> {
    let mut socket = tokio::net::UnixStream::connect(dir.join("monitor.sock"))
        .await
        .context("cannot reach QEMU's monitor")?;
    socket.write_all(format!("{command}\n").as_bytes()).await?;
    // The monitor answers with its banner and a prompt; reading until the second prompt shows
    // the command ran.
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.matches("(qemu)").count() < 2 && Instant::now() < deadline {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
        )
        .await
        .context("QEMU's monitor did not answer")??;
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

async fn boot_requests(controller: &Controller) -> anyhow::Result<Vec<Value>> {
    let (status, body) = controller.get("/api/v1/boot").await?;
    if status != 200 {
        bail!("GET /api/v1/boot: {status} {body}");
    }
    body["requests"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("no requests in {body}"))
}

fn check_inventory(doc: &Value) -> anyhow::Result<()> {
    let dmi = &doc["dmi"];
    for (key, want) in [
        ("product_uuid", UUID),
        ("sys_vendor", SYS_VENDOR),
        ("product_name", PRODUCT),
        ("product_version", PRODUCT_VERSION),
        ("product_serial", PRODUCT_SERIAL),
        ("product_sku", SKU),
        ("product_family", FAMILY),
        ("chassis_vendor", SYS_VENDOR),
        ("chassis_version", CHASSIS_VERSION),
        ("chassis_serial", CHASSIS_SERIAL),
        ("chassis_asset_tag", CHASSIS_ASSET),
    ] {
        if dmi[key] != want {
            bail!("dmi.{key} is {}, QEMU said {want:?}", dmi[key]);
        }
    }
    if doc["cpu"]["threads"] != CPUS {
        bail!(
            "cpu.threads is {}, QEMU has {CPUS} CPUs",
            doc["cpu"]["threads"]
        );
    }
    let dimms: u64 = doc["mem"]["dimms"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["size"].as_u64()).sum())
        .unwrap_or(0);
    if dimms != MEMORY_MIB << 20 {
        bail!("memory devices add up to {dimms} B, QEMU has {MEMORY_MIB} MiB");
    }
    // What the kernel can use is a little less than what is installed.
    let total = doc["mem"]["total"].as_u64().unwrap_or(0);
    if !(total > (MEMORY_MIB << 20) * 8 / 10 && total <= MEMORY_MIB << 20) {
        bail!("mem.total is {total} B for {MEMORY_MIB} MiB installed");
    }
    let mut disks: Vec<(String, u64, String)> = doc["os_storage"]
        .as_array()
        .ok_or_else(|| anyhow!("no os_storage list"))?
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or("").to_owned(),
                d["size"].as_u64().unwrap_or(0),
                d["serial"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    disks.sort();
    let mut want: Vec<(String, u64, String)> = DISKS
        .iter()
        .map(|(name, size, _, serial)| ((*name).to_owned(), *size, (*serial).to_owned()))
        .collect();
    want.sort();
    if disks != want {
        bail!("disks are {disks:?}, QEMU has {want:?}");
    }
    let mut macs: Vec<&str> = doc["interfaces"]
        .as_array()
        .ok_or_else(|| anyhow!("no interfaces list"))?
        .iter()
        .filter(|i| i["physical"] == true)
        .filter_map(|i| i["address"].as_str())
        .collect();
    macs.sort();
    if macs != MACS {
        bail!("physical NICs have MACs {macs:?}, QEMU has {MACS:?}");
    }
    Ok(())
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_network_boots_the_image_registers_and_then_boots_locally() {
    let out = prerequisites().unwrap();
    let image: Value =
        serde_json::from_slice(&std::fs::read(out.join("image.json")).unwrap()).unwrap();
    let build_id = image["build_id"].as_str().unwrap().to_owned();
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(data.path(), &["--boot-dir", out.to_str().unwrap()])
        .await
        .unwrap();
    let http_port: u16 = controller
        .http_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let vm = tempfile::tempdir().unwrap();
    let (_qemu, console, started) = start_qemu(vm.path(), http_port).await.unwrap();
    let id = expected_mercury_id();

    // Registration: the document exists with the agent online.
    let registered = wait_until(
        "the PXE-booted agent registered",
        Duration::from_secs(300),
        || async {
            let (status, doc) = controller.get(&format!("/api/v1/inventory/{id}")).await?;
            Ok((status == 200 && doc["agent"]["online"] == true).then(|| (started.elapsed(), doc)))
        },
    )
    .await;
    let (registered_at, doc) = match registered {
        Ok(r) => r,
        Err(e) => panic!("{e:#}\nconsole:\n{}", console.tail(60)),
    };

    // /init says so too (its console line can trail the controller's record a little).
    wait_until(
        "the console says the agent registered",
        Duration::from_secs(60),
        || async { Ok(console.find("agent registered with", Duration::ZERO)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", console.tail(40)));

    // Where the time went, from the console (iPXE's lines, then /init's).
    let zero = Duration::ZERO;
    let marks = [
        (
            "firmware (SeaBIOS, iPXE, DHCP, TFTP) until the boot script",
            console.find("/boot/ipxe...", zero),
        ),
        (
            "kernel and initramfs downloaded",
            console.find("initramfs.img...", zero),
        ),
        ("kernel booted to /init", console.find("qs-init:", zero)),
        (
            "drivers loaded, links up: DHCP asked",
            console.find("asking for a DHCP lease", zero),
        ),
        ("lease", console.find("network up:", zero)),
        (
            "agent registered (console)",
            console.find("agent registered with", zero),
        ),
    ];
    let mut previous = zero;
    println!("PXE boot under TCG, from QEMU start:");
    for (what, at) in marks {
        match at {
            Some(at) => {
                println!(
                    "  {:>7}  (+{:>6})  {what}",
                    seconds(at),
                    seconds(at.saturating_sub(previous))
                );
                previous = at;
            }
            None => println!("        -  {what}: not seen on the console"),
        }
    }
    println!(
        "  {:>7}  agent registered (controller)",
        seconds(registered_at)
    );

    // The controller was asked by that machine, and answered with the agent image.
    let requests = boot_requests(&controller).await.unwrap();
    let agent_answer = requests
        .iter()
        .find(|r| r["answer"] == "agent")
        .unwrap_or_else(|| panic!("no agent script was served: {requests:?}"));
    assert_eq!(agent_answer["mac"], MACS[0], "{agent_answer}");
    assert_eq!(agent_answer["uuid"], UUID, "{agent_answer}");
    assert_eq!(agent_answer["serial"], PRODUCT_SERIAL, "{agent_answer}");
    assert!(agent_answer["script"].as_str().unwrap().contains(&format!(
        "qs.controller=tcp://10.0.2.2:{}",
        controller.agents_addr().rsplit(':').next().unwrap()
    )));

    // The inventory states exactly the hardware QEMU was given.
    assert_eq!(doc["mercury_id"], id.as_str());
    if let Err(e) = check_inventory(&doc) {
        panic!("{e:#}\ninventory: {doc}");
    }

    // A capability call through the controller comes back with output (`inspect`: the agent's
    // only capability so far; a `run` capability is another issue's).
    let (status, call) = controller
        .post(
            &format!("/api/v1/agents/{id}/calls"),
            &json!({"capability": "inspect", "args": {"only": ["dmi"]}, "timeout": 120}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["outcome"], "succeeded", "{call}");
    assert_eq!(
        call["output"]["dmi"]["product_serial"], PRODUCT_SERIAL,
        "{call}"
    );

    // An operator marks the host local; a typo in the mode is refused.
    let bad = controller
        .client()
        .put(format!("{}/api/v1/hosts/{id}/boot", controller.http))
        .json(&json!({"mode": "disk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let (ok, stdout, stderr) = controller
        .cli(&["hosts", "boot", &id, "local"])
        .await
        .unwrap();
    assert!(ok, "qs hosts boot failed: {stderr}");
    assert!(stdout.contains("boots local"), "{stdout}");
    let (_, doc) = controller
        .get(&format!("/api/v1/inventory/{id}"))
        .await
        .unwrap();
    assert_eq!(doc["boot"]["mode"], "local", "{doc}");

    // Reboot: iPXE asks again and the controller answers with the local-disk script.
    let reset_at = started.elapsed();
    monitor(vm.path(), "system_reset").await.unwrap();
    let local = wait_until(
        "iPXE fetched the local-boot script",
        Duration::from_secs(180),
        || async {
            let requests = boot_requests(&controller).await?;
            Ok(requests.into_iter().find(|r| r["answer"] == "local"))
        },
    )
    .await;
    let local = match local {
        Ok(r) => r,
        Err(e) => panic!("{e:#}\nconsole:\n{}", console.tail(40)),
    };
    assert_eq!(local["host"], id.as_str(), "{local}");
    let script = local["script"].as_str().unwrap();
    assert!(
        script.contains("sanboot --no-describe --drive 0x80 || exit 0"),
        "{script}"
    );
    assert!(!script.contains("kernel"), "{script}");
    wait_until(
        "the console shows the local boot",
        Duration::from_secs(60),
        || async { Ok(console.find("booting from the local disk", reset_at)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", console.tail(40)));
    // The agent said which image it runs, and the controller recorded it.
    assert_eq!(
        doc["agent"]["image_id"], build_id,
        "agent.image_id must be the served image's build id"
    );
    println!(
        "after the reset the controller answered: {}",
        script.lines().collect::<Vec<_>>().join(" | ")
    );
}
