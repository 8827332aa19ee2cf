# The agent's own image: the static release binary and the few files it needs at run time, on
# nothing else, for linux/amd64 and linux/arm64. scripts/image stages its context under
# target/image/context/ (this file, both binaries, rootfs/, home/, work/) and builds it with the
# agent itself: for the local daemon's platform as agent:VERSION and agent:latest, and with
# `--push REPOSITORY` as one image index of both platforms. To use it:
#
#   docker run --rm -e DOCKER_HOST -e JETS_SSH_KEY -e JETS_SSH_KNOWN -e REPOSITORY_URI \
#     -v "$PWD:/work" agent:latest run
#
# For a local daemon instead, mount its socket and join the socket's group:
#   -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g /var/run/docker.sock)"
FROM scratch

# rootfs/, owned by root: /etc/passwd and /etc/group (the SSH user name when DOCKER_HOST names
# none, and the OpenSSH-style home), /etc/nsswitch.conf (host names from /etc/hosts, then DNS),
# Debian's CA roots at /etc/ssl/certs/ca-certificates.crt (the first place the AWS SDK's rustls
# looks: rustls-native-certs via openssl-probe), /tmp (1777) and /root (0700).
# scratch has no directories at all, and the classic builder gives the destination directory of
# a COPY mode 0755 whatever the source's: directories whose mode matters are entries inside the
# copied directory, where their modes are kept.
COPY rootfs/ /
# The agent user's home (0700) and working directory; the context's entries are owned by 0:0.
COPY --chown=1000:1000 home/ /home/
COPY --chown=1000:1000 work/ /work/
# The binary of the platform being built: agent-amd64 or agent-arm64 (BuildKit sets TARGETARCH;
# scripts/image gives it to a classic build).
ARG TARGETARCH
COPY agent-${TARGETARCH} /agent

USER agent
# Not HOME: `agent run` sends the working directory as the build context by default, and HOME
# holds ~/.ssh/id_rsa once the key is installed.
WORKDIR /work
ENTRYPOINT ["/agent"]
