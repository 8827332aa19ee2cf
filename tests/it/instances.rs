//! Issue 27 (an EC2 instance as the host): `ssh://user@i-…` is asked of EC2, started when stopped,
//! and reached at its private address, its host key pinned by its id. Against moto, whose instance
//! in a `127.0.0.0/24` subnet keeps the private address 127.0.0.1 across stop and start — so the
//! world's sshd is that instance's; and against a stand-in EC2 of the test's own for the states
//! moto never shows (`stopping`, `pending`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::agent::Agent;
use crate::build::{example_app, full_run, over_ssh, unique};
use crate::world::{World, read};

/// A new instance in moto at 127.0.0.1 (a VPC 127.0.0.0/16, a subnet 127.0.0.0/24), stopped; its id.
pub(crate) fn stopped_instance(world: &World) -> String {
    let script = format!(
        "import boto3\n\
         ec2 = boto3.client('ec2', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
         vpc = ec2.create_vpc(CidrBlock='127.0.0.0/16')['Vpc']['VpcId']\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='127.0.0.0/24')['Subnet']['SubnetId']\n\
         image = ec2.describe_images()['Images'][0]['ImageId']\n\
         id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress='127.0.0.1')['Instances'][0]['InstanceId']\n\
         ec2.stop_instances(InstanceIds=[id])\n\
         print(id)\n",
        world.moto_url
    );
    let output = Command::new(&world.python).args(["-c", &script]).output().expect("python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The instance's state in moto.
pub(crate) fn state(world: &World, id: &str) -> String {
    let script = format!(
        "import boto3\n\
         ec2 = boto3.client('ec2', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
         print(ec2.describe_instances(InstanceIds=['{id}'])['Reservations'][0]['Instances'][0]['State']['Name'])\n",
        world.moto_url
    );
    let output = Command::new(&world.python).args(["-c", &script]).output().expect("python");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The world's known_hosts lines, naming `[ID]:PORT` instead of the address.
fn known_by_id(world: &World, id: &str) -> String {
    let address = format!("[{}]:{}", world.ssh_host, world.ssh_port);
    read(&world.known_hosts_plain).replace(&address, &format!("[{id}]:{}", world.ssh_port))
}

fn instance_url(world: &World, id: &str) -> String {
    format!("ssh://{}@{id}:{}", world.ssh_user, world.ssh_port)
}

/// Done when (issue 27): a stopped instance is started by a run that needs it, which then builds
/// and pushes; the host key is pinned by a known_hosts line naming the instance, not its address.
#[test]
fn a_stopped_instance_is_started_by_the_run_which_builds_and_pushes() {
    let world = World::shared();
    let id = stopped_instance(world);
    assert_eq!(state(world, &id), "stopped");
    let repository = unique("instance");
    let agent = full_run(world, &repository)
        .env("DOCKER_HOST", instance_url(world, &id))
        .env("JETS_SSH_KNOWN", known_by_id(world, &id));
    let app = example_app(agent.work.path());
    std::fs::write(app.join("src/id.txt"), &repository).unwrap();
    let outcome = agent.args(["run", "--context", app.to_str().unwrap()]).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains(&format!("{id} is stopped: starting it")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("started {id} in ")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("pushed sha256:"), "{}", outcome.stderr);
    assert!(world.ecr_tags(&repository).contains(&"latest".to_string()), "{}", outcome.stderr);
    assert_eq!(state(world, &id), "running");
    assert!(!outcome.all_output().contains("test-secret-access-key"));

    // Running now: the next run starts nothing, and a line naming the address still lets it in.
    let outcome = full_run(world, &repository)
        .env("DOCKER_HOST", instance_url(world, &id))
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(0);
    assert!(!outcome.stderr.contains("starting it"), "{}", outcome.stderr);
}

/// A line naming the instance pins it: another key under its id is a changed key (24), even though
/// a line naming its address holds the right one.
#[test]
fn a_line_naming_the_instance_pins_its_key_over_one_naming_its_address() {
    let world = World::shared();
    let id = stopped_instance(world);
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy";
    let known = format!("[{id}]:{} {other}\n{}", world.ssh_port, read(&world.known_hosts_plain));
    let outcome = over_ssh(world)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &world.moto_url)
        .env("DOCKER_HOST", instance_url(world, &id))
        .env("JETS_SSH_KNOWN", known)
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(24);
}

#[test]
fn an_instance_ec2_does_not_know_fails_as_a_name_that_does_not_resolve_with_a_hint() {
    let world = World::shared();
    let outcome = full_run(world, "it/none")
        .env("DOCKER_HOST", instance_url(world, "i-0123456789abcdef0"))
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(20);
    assert!(outcome.stderr.contains("the EC2 instance i-0123456789abcdef0"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("region"), "{}", outcome.stderr);
}

#[test]
fn the_plan_says_the_instance_is_asked_of_ec2_and_started_if_stopped() {
    let world = World::shared();
    let outcome = over_ssh(world)
        .env("DOCKER_HOST", instance_url(world, "i-0123456789abcdef0"))
        .args(["run", "--dry", "--image", "app", "--start-timeout", "240"])
        .run();
    outcome.expect_code(0);
    assert!(
        outcome.stdout.contains(
            "connect to i-0123456789abcdef0 (an EC2 instance: its private address asked of EC2, started if stopped, \
             up to 240 s;"
        ),
        "{}",
        outcome.stdout
    );
}

/// A stand-in EC2: DescribeInstances answers the states in turn (the last one for ever);
/// StartInstances is counted. The private address is 127.0.0.1.
struct StandIn {
    url: String,
    starts: Arc<Mutex<usize>>,
    actions: Arc<Mutex<Vec<String>>>,
}

fn stand_in(id: &str, states: &[&'static str]) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let starts = Arc::new(Mutex::new(0));
    let actions = Arc::new(Mutex::new(Vec::new()));
    let (id, states) = (id.to_string(), states.to_vec());
    let (counted, seen) = (starts.clone(), actions.clone());
    std::thread::spawn(move || {
        let mut next = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).to_string();
            let answer = if body.contains("Action=StartInstances") {
                *counted.lock().unwrap() += 1;
                seen.lock().unwrap().push("start".to_string());
                format!(
                    "<StartInstancesResponse><instancesSet><item><instanceId>{id}</instanceId></item></instancesSet></StartInstancesResponse>"
                )
            } else {
                let state = states[next.min(states.len() - 1)];
                next += 1;
                seen.lock().unwrap().push(state.to_string());
                format!(
                    "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
                     <instanceId>{id}</instanceId><instanceState><name>{state}</name></instanceState>\
                     <privateIpAddress>127.0.0.1</privateIpAddress></item></instancesSet></item></reservationSet>\
                     </DescribeInstancesResponse>"
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    StandIn { url, starts, actions }
}

fn with_stand_in(agent: Agent, stand_in: &StandIn) -> Agent {
    agent
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_EC2", &stand_in.url)
}

/// A stopping instance is waited for, then started, then waited for while pending; `agent host
/// keyscan` then writes lines naming the instance, which a run trusts whatever the address.
#[test]
fn a_stopping_instance_is_waited_for_then_started_and_keyscan_names_it_by_its_id() {
    let world = World::shared();
    let id = "i-0aaaaaaaaaaaaaaa1";
    let ec2 = stand_in(id, &["stopping", "stopped", "pending", "running"]);
    let url = instance_url(world, id);
    let outcome = with_stand_in(Agent::new(), &ec2).args(["host", "keyscan", &url]).run();
    outcome.expect_code(0);
    assert_eq!(*ec2.starts.lock().unwrap(), 1, "started once");
    assert_eq!(*ec2.actions.lock().unwrap(), ["stopping", "stopped", "start", "pending", "running"]);
    assert!(outcome.stderr.contains(&format!("{id} is stopping: waiting for it to stop")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("started {id} in ")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("[{id}]:{} (at 127.0.0.1) offers ssh-ed25519", world.ssh_port)));
    let lines = outcome.stdout.clone();
    assert!(lines.lines().all(|line| line.starts_with("|1|")), "{lines}");

    // The scanned lines (hashed, naming the id) let a run in; the instance is running now.
    let ec2 = stand_in(id, &["running"]);
    let outcome = with_stand_in(over_ssh(world), &ec2)
        .env("DOCKER_HOST", &url)
        .env("JETS_SSH_KNOWN", &lines)
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(0);
    assert_eq!(*ec2.starts.lock().unwrap(), 0, "a running instance is not started");
}

/// An instance that never comes up fails within --start-timeout as a timeout (22), with a hint.
#[test]
fn an_instance_that_stays_pending_times_out_within_the_start_timeout() {
    let world = World::shared();
    let id = "i-0aaaaaaaaaaaaaaa2";
    let ec2 = stand_in(id, &["pending"]);
    let started = std::time::Instant::now();
    let outcome = with_stand_in(over_ssh(world), &ec2)
        .env("DOCKER_HOST", instance_url(world, id))
        .env("AGENT_START_TIMEOUT", "4")
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(22);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(outcome.stderr.contains("not ready within 4s (last seen: pending)"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("--start-timeout"), "{}", outcome.stderr);
}

/// In a pool, a stopped instance is started, and has the failover timeout to come up before the next
/// host takes the build (its start stands: the next run finds it running).
#[test]
fn a_pools_stopped_instance_is_started_and_passed_over_after_the_failover_timeout() {
    let world = World::shared();
    let id = "i-0aaaaaaaaaaaaaaa3";
    let ec2 = stand_in(id, &["stopped", "pending"]);
    let started = std::time::Instant::now();
    let outcome = with_stand_in(over_ssh(world), &ec2)
        .env("AGENT_HOSTS", instance_url(world, id))
        .env("AGENT_FALLBACK_HOST", world.ssh_url())
        .env("AGENT_FAILOVER_TIMEOUT", "2")
        .args(["run", "--check", "--image", "app", "-vv"])
        .run();
    outcome.expect_code(0);
    assert!(!outcome.all_output().contains("test-secret-access-key"), "the secret key in the log at -vv");
    assert_eq!(*ec2.starts.lock().unwrap(), 1, "its start was asked for");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(outcome.stderr.contains(&format!("{id}: not ready within 2s (last seen: ")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("[timeout]; ssh://"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("building on the fallback"), "{}", outcome.stderr);
}
