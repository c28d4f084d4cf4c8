variable "student" {
  default = "student{{ STDID }}"
}

resource "docker_container" "lab" {
  name  = "lab-${var.student}"
  image = "{{ DOCKERHUB }}/lab:latest"
}
