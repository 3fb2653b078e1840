# Sourced by the gateway benches: the config both builds of a before/after
# run read. The bench's key (tg-demo-enterprise) on a tier, and one model,
# with limits far above the load and no budget; an admin token
# ($ADMIN_TOKEN); everything else at its default. Needs $AFTER (the build
# whose `hash-key` is used) and $UPSTREAM (the simulated upstream's base URL).
#
#   gateway_config LISTEN STORE_URL
gateway_config() {
    cat <<CONFIG
[server]
listen = "$1"
[store]
url = "$2"
[admin]
token_sha256 = "$("$AFTER" hash-key "$ADMIN_TOKEN")"
[providers.simulated]
base_url = "$UPSTREAM"
[providers.simulated.models."gpt-4o-mini"]
rpm = 100000000
tpm = 100000000000
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
[tiers.enterprise]
rpm = 100000000
tpm = 100000000000
burst = 2.0
[[clients]]
id = "acme-enterprise"
tier = "enterprise"
key_sha256 = ["$("$AFTER" hash-key tg-demo-enterprise)"]
CONFIG
}
