//! `node certs`: throwaway TLS credentials for a development or test
//! cluster, so that TLS is one flag (`node serve --tls-dir DIR`) away.
//!
//! The files are those of `net::tls::dev_certificates` (rcgen): a node CA
//! and a client CA (their keys beside them, which is why this is not for
//! production), `node-ID.pem/.key` per node, `client-USER.pem/.key` per user
//! and a `client-tokens` file giving each user the same roles as a token.
//! Into a directory that holds CAs already (adding a node), it reuses them.

use crate::config::CertsConfig;

/// Writes the files and prints how to use them.
pub fn run_certs(config: &CertsConfig) -> Result<(), net::tls::DevCertError> {
    let users: Vec<(&str, net::Roles)> = config.users.iter().map(|(name, roles)| (name.as_str(), *roles)).collect();
    let written = net::tls::dev_certificates(&config.dir, config.cluster_id, &config.node_ids, &users)?;
    let dir = config.dir.display();
    println!("wrote throwaway TLS credentials for cluster {} to {dir}:", config.cluster_id);
    let ca = if written.reused_cas { " (already there: reused, so the members trust what is new)" } else { "" };
    println!("  node CA        {}{ca}", written.node_ca.certificate.display());
    println!("  client CA      {}{ca}", written.client_ca.certificate.display());
    for (id, files) in &written.nodes {
        println!("  node {id:<9} {} (key {})", files.certificate.display(), files.private_key.display());
    }
    for (name, roles) in &config.users {
        let Some(files) = written.users.get(name) else { continue };
        println!("  user {name} ({roles}): {} (key {})", files.certificate.display(), files.private_key.display());
    }
    let kept = if written.reused_cas { "; users already there keep their tokens" } else { "" };
    println!("  client tokens  {} (name:roles:token; mode 0600{kept})", written.token_file.display());
    println!("serve with TLS:  node serve --tls-dir {dir} ...   (every node, its own --node-id)");
    if let Some((name, _)) = config.users.first() {
        println!(
            "a client:        node kv --cluster-id {} --tls-ca {dir}/node-ca.pem --tls-cert {dir}/client-{name}.pem \
             --tls-key {dir}/client-{name}.key get KEY",
            config.cluster_id
        );
    }
    println!("The CA keys are in {dir} too: fine for development, not for production.");
    Ok(())
}
