#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target (fuzz/seeds/<target>/) from the
# repository's fixtures: example configs and data, the mappings, plan JSON
# from the snapshot tests, and SCIM / Graph bodies and header values as the
# unit tests use them. The checked-in corpora (fuzz/corpus/<target>/) were
# grown from these and minimised with `cargo fuzz cmin`; run this, then
# scripts/fuzz.sh, to start again from the seeds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SEEDS=fuzz/seeds
rm -rf "$SEEDS"

seed() { # seed TARGET NAME: the seed's bytes on stdin
    mkdir -p "$SEEDS/$1"
    cat >"$SEEDS/$1/$2"
}
# The targets whose first byte picks a variant: prefix it.
picked() { # picked TARGET NAME BYTE(octal) FILE-or-stdin
    { printf "\\$3"; cat "${4:--}"; } | seed "$1" "$2"
}

for f in examples/*.yaml; do seed config "$(basename "$f")" <"$f"; done
printf 'target:\n  url: ${IDSYNC_URL}\n  token: $$literal\n' | seed config env

for f in mappings/*.yaml; do
    { cat "$f"; printf '\0givenName=Ada\nsn=Lovelace\nmail=ada@example.com\ndepartment=Engineering\n@engineering\n'; } |
        seed mapping "$(basename "$f")"
done

picked csv_users comma 000 examples/data/users.csv
head -5 examples/data/users.csv | tr ',' ';' | picked csv_users semicolon 001
printf 'id,email\r\n"u1","a@example.com"\r\n\r\n"u2","b ""q"" @x"\r\n' | picked csv_users quoted 000
picked csv_groups comma 000 examples/data/groups.csv
printf 'group,member\nEngineering,u1\nEngineering,u2\nOps,u9\n' | picked csv_groups unknown 000

printf 'uid=ada,ou=people,dc=example,dc=com' | seed ldap dn
printf 'CN=Lovelace\\, Ada ,OU=Staff\\2C UK,DC=corp,DC=example' | seed ldap escaped
printf 'cn=Builtin Users,CN=Builtin,DC=corp' | seed ldap builtin
head -c 300 examples/ldap/sample.ldif | seed ldap ldif

for f in tests/e2e/snapshots/*plan*json*.snap src/plan/snapshots/*plan_json*.snap; do
    awk 'n >= 2 { print } /^---$/ { n++ }' "$f" | seed saved_plan "$(basename "$f" .snap)"
done

picked scim list 000 <<'JSON'
{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":2,"startIndex":1,"itemsPerPage":2,"Resources":[{"id":"2819c223","userName":"ada@example.com","externalId":"u1","active":true,"name":{"givenName":"Ada","familyName":"Lovelace"},"emails":[{"value":"ada@example.com","primary":true}],"meta":{"created":"2026-01-02T03:04:05Z"}},{"id":"g1","displayName":"Engineering","members":[{"value":"2819c223","display":"ada@example.com"}]}]}
JSON
picked scim user 001 <<'JSON'
{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],"id":"2819c223","userName":"ada@example.com","active":"True","title":"Engineer","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"department":"R&D","manager":{"value":"m1"}},"phoneNumbers":[{"value":"+1 555","type":"work"}]}
JSON
picked scim error 002 <<'JSON'
{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"userName taken"}
JSON
printf '<html><body>502 Bad Gateway</body></html>' | picked scim error-html 002
picked scim spc 003 <<'JSON'
{"patch":{"supported":true},"bulk":{"supported":false},"filter":{"supported":true,"maxResults":200},"changePassword":{"supported":false},"sort":{"supported":false},"etag":{"supported":false},"authenticationSchemes":[]}
JSON
picked scim schemas 004 <<'JSON'
{"Resources":[{"id":"urn:ietf:params:scim:schemas:core:2.0:User","attributes":[{"name":"userName","type":"string","required":true,"caseExact":false,"uniqueness":"server","mutability":"readWrite"},{"name":"name","type":"complex","subAttributes":[{"name":"givenName","type":"string","required":true}]},{"name":"emails","type":"complex","multiValued":true,"subAttributes":[{"name":"value","type":"string"}]}]},{"id":"urn:ietf:params:scim:schemas:core:2.0:Group","attributes":[{"name":"displayName","required":true},{"name":"members","required":false}]}]}
{"Resources":[{"id":"User","endpoint":"/Users","schema":"urn:ietf:params:scim:schemas:core:2.0:User","schemaExtensions":[{"schema":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User","required":false}]}]}
JSON

picked graph users 000 <<'JSON'
{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users","@odata.nextLink":"https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x","value":[{"id":"a1","displayName":"Ada","mail":"ada@example.com","accountEnabled":true,"otherMails":["a@x.org"],"manager@delta":[{"id":"m1"}]},{"id":"a2","@removed":{"reason":"changed"}},{"id":"a3","jobTitle":null,"employeeId":42}]}
JSON
picked graph groups 001 <<'JSON'
{"@odata.deltaLink":"https://graph.microsoft.com/v1.0/groups/delta?$deltatoken=y","value":[{"id":"g1","displayName":"Engineering","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"a1"},{"@odata.type":"#microsoft.graph.group","id":"g2"},{"id":"a2","@removed":{"reason":"deleted"}}]},{"id":"g2","displayName":"Nested","members@delta":[{"id":"g1"},{"id":"a3"}]}]}
JSON
picked graph token 002 <<'JSON'
{"token_type":"Bearer","expires_in":3599,"ext_expires_in":"3599","access_token":"eyJ0eXAi"}
JSON

for value in $'120\n1767225660' $'Wed, 21 Oct 2015 07:28:00 GMT\n2026-12-05T21:26Z' \
    $'0\n1767225600123' $'  7  \n2026-01-01T00:00:30.5+01:00' $'soon\n2026-01-01 00:01Z'; do
    printf '%s' "$value" | seed rate_limit "$(printf '%s' "$value" | cksum | cut -d' ' -f1)"
done

printf 'ada@example.com\0<script>alert(1)</script>\0=HYPERLINK("x")\0\x1b[31m\0' | seed render markup
